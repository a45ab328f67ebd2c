"""The core's torch-free edge: everything the client shares with it, and nothing of the models.

    files    frame files: decode a video or image, encode frames to one (PyAV, PIL)
    pipes    raw RGB24 and YUV4MPEG2 frame streams (stdin/stdout)
    stills   still-image output (one file or a %d pattern)
    cli      the command-line convention of every tool: argparse base, value types, exit codes
    atomic   atomic file writes

With the generated wire stubs in `sinfusion.v1` (their path follows the proto's package), this is all
the client (`sinfusion.clients`) imports from the core; tests/test_client_cli.py checks that nothing
else loads.
Nothing here imports the rest of the core.
"""
