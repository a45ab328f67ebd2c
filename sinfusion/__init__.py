"""SinFusion core: the network, noise schedules, sampling loops, bundles and video I/O.

Nothing here imports the trainer, the exporter, the server or the clients. Importing the package
itself is cheap: torch is only imported by the modules that need it (network, torch_runtime).
"""

__version__ = "0.1.0"
