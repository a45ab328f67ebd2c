"""`sinfusion`: the shell client. Frames in and out through ffmpeg-friendly pipes or files.

    sinfusion models
    sinfusion extrapolate --model clouds --frames 48 -o future.mp4
    sinfusion generate --model clouds --frames 48 | ffplay -
    sinfusion project --model photo --strength 0.6 -i edit.png -o result.png
    sinfusion summarize --model photo --scales 0.9,0.8,0.7 -i photo.png -o step-%02d.png
    ffmpeg -i in.mp4 -f yuv4mpegpipe - | sinfusion upsample --model clouds --factor 4 | ffmpeg -i - out.mp4

Frames go to stdout (or --output) only; progress and errors go to stderr. Exit codes (docs/cli.md):
0 done (also when the downstream reader closed the pipe early), 1 a bug in the client, 2 bad usage,
3 bad input, 4 output not writable, 5 the server broke the protocol, 6 `health` found the server not
serving, 100 + N a gRPC status N from the server (e.g. 103 INVALID_ARGUMENT, 105 NOT_FOUND,
114 UNAVAILABLE), 130 interrupted. Every failure is one line on stderr.
"""

from __future__ import annotations

import os

# gRPC's C core logs some failures itself (a TLS handshake, at INFO level) on stderr, which would break
# the one-line error contract. It reads GRPC_VERBOSITY once, when grpc is imported, hence here, first.
# GRPC_VERBOSITY=INFO (or DEBUG) in the environment brings those logs back for debugging.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterable, Iterator  # noqa: E402
from itertools import chain  # noqa: E402

import grpc  # noqa: E402
import numpy as np

from sinfusion.io.cli import (EXIT_FAILED, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE,
                              InputError, Parser, UsageError, add_sampling_args, fail, frame_size,
                              int_at_least, positive_float, sampling_choice, scales_arg, strength_arg,
                              usage_failed)
from sinfusion.io.files import VideoError
from sinfusion.io.pipes import PipeError, frame_size_problem
from sinfusion.io.stills import StillsError, is_pattern, is_still, write_stills

from . import cli_size
from .cli_io import OutputError, Source, check_output, open_source, write_frames
from .errors import ClientError
from .messages import Frame, Sampling
from .options import DEFAULT_ADDRESS, ConnectionOptions
from .sync import Client

PROG = "sinfusion"
# The shared codes (sinfusion.io.cli) and the client's own; one table for every tool: docs/cli.md.
EXIT_BUG = EXIT_FAILED  # the client runs no checks of its own that could fail: 1 is a bug
EXIT_PROTOCOL, EXIT_NOT_SERVING = 5, 6
GRPC_EXIT_BASE = 100  # exit code = 100 + the gRPC status number


def exit_code(code: grpc.StatusCode | None) -> int:
    """The process exit code for a server status (None: a reply that broke the contract)."""
    return EXIT_PROTOCOL if code is None else GRPC_EXIT_BASE + code.value[0]


def _connection_args(p: argparse.ArgumentParser, defaults: bool) -> None:
    # Accepted before and after the command; the copy after it only overrides when given.
    d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    p.add_argument("--address", default=d(os.environ.get("SINFUSION_ADDRESS", DEFAULT_ADDRESS)),
                   help=f"server HOST:PORT (env SINFUSION_ADDRESS; default {DEFAULT_ADDRESS})")
    p.add_argument("--token", default=d(os.environ.get("SINFUSION_TOKEN")),
                   help="bearer token (env SINFUSION_TOKEN, which keeps it out of `ps`)")
    p.add_argument("--tls", action="store_true", default=d(False),
                   help="TLS with the system's root certificates")
    p.add_argument("--tls-ca", metavar="PEM", default=d(None),
                   help="TLS, trusting this root certificate file")
    p.add_argument("--timeout", type=positive_float, default=d(30.0),
                   help="seconds for ListModels/DescribeModel (streams have no deadline)")
    p.add_argument("-q", "--quiet", action="store_true", default=d(False),
                   help="no progress or summary on stderr")


def _sampling_args(p: argparse.ArgumentParser, correction: bool = True) -> None:
    g = p.add_argument_group("sampling")
    # a projection is itself the correction: project and summarize have none
    add_sampling_args(g, correction=correction)
    g.add_argument("--seed", type=int_at_least(0), default=None, help="random seed (default: random)")


def _input_args(p: argparse.ArgumentParser, output_size: bool = True) -> None:
    g = p.add_argument_group("input (stdin: y4m, recognised by its header, or raw RGB24 with --size)")
    g.add_argument("-i", "--input", metavar="FILE",
                   help="read frames from FILE (any video, .y4m, .rgb) instead of stdin")
    g.add_argument("--size", type=frame_size, metavar="WxH",
                   help="frame size of raw RGB24 input (at most 2^24 pixels)")
    g.add_argument("--input-fps", type=positive_float, metavar="FPS",
                   help="frame rate of raw input (default: the model's)")
    g.add_argument("--resize", choices=("resize", "refuse"), default="resize",
                   help="input frames not at the model's size: resized by the server, or refused")
    if output_size:
        g.add_argument("--output-size", choices=("model", "input"), default=None,
                       help="when the input's size differs from the model's: output at the model's size, "
                            "or resized back to the input's here (required for raw stdout output then)")


def _output_args(p: argparse.ArgumentParser, stills: bool = False) -> None:
    g = p.add_argument_group("output (stdout unless --output)")
    g.add_argument("-o", "--output", metavar="FILE",
                   help="write to FILE: .mp4 .mov .mkv .webm .gif .y4m .rgb"
                        + (", or images: .png .jpg, a numbered pattern (step-%%03d.png) for several"
                           if stills else ""))
    g.add_argument("--format", choices=("y4m", "raw"), default="y4m", help="stdout format (default y4m)")
    g.add_argument("--chroma", choices=("444", "422", "420"), default="444", help="y4m chroma subsampling")
    g.add_argument("--fps", type=positive_float,
                   help="frame rate written to the output (default: the source's)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Stream frames from a SinFusion server through pipes and files.",
                     epilog="Exit codes: 0 ok or downstream closed, 1 client bug, 2 usage, 3 input, 4 output, "
                            "5 protocol, 6 not serving, 100+N gRPC status N, 130 interrupted.")
    _connection_args(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        _connection_args(p, defaults=False)
        return p

    p = command("models", "list the served models, or describe one")
    p.add_argument("name", nargs="?", help="describe only this model")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = command("health", "the server's grpc.health.v1 status: exit 0 when SERVING, 6 otherwise")
    p.add_argument("--service", default="", help="a service name (default: the whole server)")

    p = command("extrapolate", "frames after (or before) a clip frame or the first input frame")
    p.add_argument("--model", required=True)
    p.add_argument("--frames", type=int_at_least(1), required=True, help="frames to produce")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--start-frame", type=int_at_least(0), help="index of a training-clip frame (default 0)")
    start.add_argument("--start-from-input", action="store_true", help="start from the first input frame")
    p.add_argument("--step", type=int, default=1, help="frame step k: negative goes back in time (default 1)")
    _sampling_args(p)
    _input_args(p)
    _output_args(p)

    p = command("generate", "a new variation of the clip, from one of its frames varied")
    p.add_argument("--model", required=True)
    p.add_argument("--frames", type=int_at_least(1), required=True, help="frames to produce")
    _sampling_args(p)
    _output_args(p)

    p = command("upsample", "temporal upsampling of the input: factor - 1 new frames between each pair")
    p.add_argument("--model", required=True)
    p.add_argument("--factor", type=int, choices=(2, 4, 8), required=True)
    _sampling_args(p)
    _input_args(p)
    _output_args(p)

    p = command("project", "noise every input image to --strength and denoise it with the model's "
                           "Projector: edits and sketches come back in the model's detail")
    p.add_argument("--model", required=True)
    p.add_argument("--strength", type=strength_arg, default=None,
                   help="noise std in [0, 1]: 0 = unchanged, 1 = pure noise (default: the server's, 0.6)")
    p.add_argument("--intermediate-steps", action="store_true",
                   help="also write the noised image and the image after every step, the result last")
    _sampling_args(p, correction=False)
    _input_args(p)
    _output_args(p, stills=True)

    p = command("summarize", "visual summary of the first input image: shrunk by each of --scales, "
                             "every step projected")
    p.add_argument("--model", required=True)
    p.add_argument("--scales", type=scales_arg, default=[0.9, 0.8, 0.7, 0.6, 0.5],
                   help="comma-separated sizes relative to the image at the model's size, in (0, 1] "
                        "(default 0.9,0.8,0.7,0.6,0.5)")
    p.add_argument("--axes", choices=("both", "width", "height"), default="both",
                   help="the sides that shrink (default both)")
    p.add_argument("--strength", type=strength_arg, default=None,
                   help="noise std of every step, in [0, 1] (default: the server's, 0.6)")
    _sampling_args(p, correction=False)
    _input_args(p, output_size=False)
    _output_args(p, stills=True)
    return parser


# ---- commands ------------------------------------------------------------------------------------

def _say(args, text: str) -> None:
    if not args.quiet:
        print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def _progress(args, frames: Iterable[Frame], total: int | None, notices: list[str]) -> Iterator[np.ndarray]:
    """Pass frames through, reporting progress on stderr (live on a terminal, a summary otherwise).

    `notices` are said when the first frame arrives: a call refused before it ends in one line."""
    live = not args.quiet and sys.stderr.isatty()
    start, n, size = time.monotonic(), 0, ""
    for frame in frames:
        if n == 0:
            for line in notices:
                _say(args, line)
        n += 1
        size = f"{frame.width}x{frame.height}"
        if live:
            rate = n / max(time.monotonic() - start, 1e-9)
            print(f"\r{PROG}: frame {n}{f'/{total}' if total else ''} {size} ({rate:.2f} frames/s)",
                  end="", file=sys.stderr, flush=True)
        yield frame.image
    if live:
        print(file=sys.stderr)
    elapsed = time.monotonic() - start
    _say(args, f"{n} frames{' ' + size if size else ''} in {elapsed:.1f} s "
               f"({n / max(elapsed, 1e-9):.2f} frames/s) -> {args.output or 'stdout'}")


def _sampling(args) -> Sampling:
    return Sampling(**sampling_choice(args), seed=args.seed)


def cmd_models(client: Client, args) -> int:
    models = [client.describe_model(args.name)] if args.name else client.list_models()
    if args.json:
        print(json.dumps([dataclasses.asdict(m) for m in models], indent=2))
        return EXIT_OK
    if not models:
        _say(args, f"no models served at {args.address}")
        return EXIT_OK
    rows = [("NAME", "SIZE", "FPS", "FRAMES", "MODE", "RUNTIME", "NEXT FRAME VS COPY", "CAPABILITIES")]
    rows += [(m.name, f"{m.width}x{m.height}", f"{m.fps:g}", str(m.frame_count), m.mode, m.runtime,
              _quality_cell(m.quality), ",".join(m.capabilities)) for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return EXIT_OK


def _quality_cell(q) -> str:
    """'31.2 vs 30.6 dB, 12/15 (beats copy)' or '-' when the trainer measured nothing."""
    if q is None:
        return "-"
    return f"{q.model_psnr:.1f} vs {q.copy_psnr:.1f} dB, {q.pairs_won}/{q.pairs} ({q.verdict})"


def cmd_health(client: Client, args) -> int:
    status = client.health(args.service)
    print(status)
    return EXIT_OK if status == "SERVING" else EXIT_NOT_SERVING


def _takes_input(args) -> bool:
    return args.command in ("upsample", "project", "summarize") or \
        (args.command == "extrapolate" and args.start_from_input)


def _check_usage(args) -> None:
    """Flag combinations argparse cannot express, refused before any input is read."""
    if args.command == "extrapolate" and not args.start_from_input:
        if args.input or args.size:
            raise UsageError("--input/--size are only used with --start-from-input")
        if args.output_size:
            raise UsageError("--output-size is only used with --start-from-input (there is no input size)")


def _open_input(args) -> tuple[Source, np.ndarray]:
    """The input and its first frame, read before the call: an empty input is an error, and the
    first frame's size decides what is said about resizing."""
    source = open_source(args.input, args.size, args.input_fps)
    first = next(source.frames, None)
    if first is None:
        raise InputError(f"{source.description}: no frames (the input ends before its first frame); "
                         f"{args.command} needs at least one")
    problem = frame_size_problem(first.shape[1], first.shape[0])
    if problem:
        raise InputError(f"{source.description}: {problem}")
    return source, first


def _stream_command(client: Client, args) -> tuple[Iterator[Frame], float, int | None, cli_size.SizePlan,
                                                    list[str]]:
    """Start the call a frame command asks for: (frames, output fps, expected count, size plan, notices)."""
    _check_usage(args)
    source, first = _open_input(args) if _takes_input(args) else (None, None)
    info = client.describe_model(args.model)  # fails fast (NOT_FOUND), gives the clip's fps and size
    input_size = None if first is None else (first.shape[1], first.shape[0])
    raw_stdout = args.output in (None, "-") and args.format == "raw"
    try:
        # summarize: its frames go out on model-size canvases (or as images of their own sizes)
        choice = "model" if args.command == "summarize" else getattr(args, "output_size", None)
        sizes = cli_size.plan((info.width, info.height), input_size, choice,
                              getattr(args, "resize", "resize"), raw_stdout, args.model)
    except cli_size.SizeChoiceError as exc:
        raise UsageError(str(exc)) from None
    notices = [line] if (line := cli_size.notice(sizes, args.model)) else []
    if args.command == "upsample":
        fps, total = args.fps or (source.fps or info.fps) * args.factor, None
        frames = client.upsample(args.model, chain([first], source.frames), args.factor, resize=args.resize,
                                 sampling=_sampling(args))
    elif args.command == "project":
        fps, total = args.fps or source.fps or info.fps, None
        frames = _project_each(client, args, chain([first], source.frames))
    elif args.command == "summarize":
        fps, total = args.fps or source.fps or info.fps, len(args.scales)
        frames = client.summarize(args.model, first, args.scales, strength=args.strength, axes=args.axes,
                                  resize=args.resize, sampling=_sampling(args))
        if not is_still(args.output or ""):  # videos and pipes hold one size
            frames = _on_canvas(frames, (info.width, info.height))
            notices.append(f"summary frames shrink; in {args.output or 'stdout'} each is centred on a black "
                           f"{info.width}x{info.height} canvas (write images, e.g. -o step-%02d.png, to keep "
                           f"their sizes)")
    else:
        fps, total = args.fps or info.fps, args.frames
        frames = (client.generate(args.model, args.frames, _sampling(args)) if args.command == "generate"
                  else client.extrapolate(args.model, args.frames, step=args.step, start_frame=args.start_frame,
                                          start_image=first, resize=args.resize, sampling=_sampling(args)))
    if raw_stdout and (first is None or args.command == "summarize"):  # no header: say the size
        w, h = sizes.output
        notices.append(f"stdout: raw RGB24 frames of {w}x{h} at {fps:g} fps (read with -f rawvideo "
                       f"-pix_fmt rgb24 -s {w}x{h} -r {fps:g})")
    return frames, fps, total, sizes, notices


def _project_each(client: Client, args, images: Iterable[np.ndarray]) -> Iterator[Frame]:
    """One Project call per input image, in order (each seeded alike when --seed is given)."""
    for image in images:
        yield from client.project(args.model, image, args.strength, resize=args.resize,
                                  sampling=_sampling(args), intermediate_steps=args.intermediate_steps)


def _on_canvas(frames: Iterable[Frame], size: tuple[int, int]) -> Iterator[Frame]:
    """Frames centred on a black canvas of `size` (width, height): one size for videos and pipes."""
    w, h = size
    for frame in frames:
        canvas = np.zeros((h, w, 3), np.uint8)
        top, left = (h - frame.height) // 2, (w - frame.width) // 2
        canvas[top:top + frame.height, left:left + frame.width] = frame.image
        yield dataclasses.replace(frame, image=canvas)


def _check_stills(args) -> None:
    """Image output: one file holds one image, so several need a numbered pattern (refused up front
    where the count is known; a second input image to a plain name fails when it comes)."""
    folder = os.path.dirname(args.output)
    if folder and not os.path.isdir(folder):
        raise OutputError(f"{args.output}: folder {folder} does not exist")
    if is_pattern(args.output):
        return
    several = (args.command == "summarize" and len(args.scales) > 1) or \
        (args.command == "project" and args.intermediate_steps)
    if several:
        p = args.output
        stem, dot, suffix = p.rpartition(".")
        raise UsageError(f"{p} holds one image but {args.command} makes several here: give a numbered "
                         f"pattern such as {stem}-%03d.{suffix}")


def cmd_frames(client: Client, args) -> int:
    stills = args.command in ("project", "summarize") and is_still(args.output or "")
    if stills:
        _check_stills(args)
    else:
        check_output(args.output)
    frames, fps, total, sizes, notices = _stream_command(client, args)
    shown = cli_size.resized(frames, sizes.output) if sizes.resize_back else frames
    try:
        if stills:
            for _ in write_stills(args.output, _progress(args, shown, total, notices)):
                pass
            return EXIT_OK
        write_frames(_progress(args, shown, total, notices), args.output, args.format, fps, args.chroma)
    except BrokenPipeError:
        # The reader downstream (head, a player that was closed) wants no more: stop the stream on
        # the server and leave quietly. stdout is pointed at /dev/null so that Python's own flush at
        # exit does not fail on the closed pipe.
        frames.close()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        _say(args, "downstream closed the pipe; stream stopped")
        return EXIT_OK
    finally:
        frames.close()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if hasattr(args, "paper_sampler"):
            sampling_choice(args)  # conflicting sampling flags fail before connecting
    except UsageError as exc:
        return usage_failed(PROG, exc)
    try:
        options = ConnectionOptions(address=args.address, tls=args.tls, tls_ca=args.tls_ca, token=args.token,
                                    timeout=args.timeout)
        with Client(options=options) as client:
            command = {"models": cmd_models, "health": cmd_health}.get(args.command, cmd_frames)
            return command(client, args)
    except ClientError as exc:
        return fail(PROG, _server_error(exc, args), exit_code(exc.code))
    except (InputError, PipeError) as exc:
        return fail(PROG, str(exc), EXIT_INPUT)
    except StillsError as exc:
        return fail(PROG, f"output: {exc}", EXIT_OUTPUT)
    except UsageError as exc:
        return usage_failed(PROG, exc)
    except BrokenPipeError:  # stdout closed by its reader while printing (e.g. `models | head -1`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (OutputError, VideoError, OSError) as exc:  # input-side failures arrive as InputError
        return fail(PROG, f"output: {exc}", EXIT_OUTPUT)
    except KeyboardInterrupt:
        return fail(PROG, "interrupted", EXIT_INTERRUPTED)
    except (ValueError, ImportError) as exc:  # a refused option (unreadable --tls-ca); no health package
        return fail(PROG, str(exc), EXIT_USAGE)
    except Exception as exc:  # noqa: BLE001 - a bug here still ends in one line, as the contract says
        return fail(PROG, f"internal error, a bug in the client: {type(exc).__name__}: {exc}", EXIT_BUG)


def _server_error(exc: ClientError, args) -> str:
    """The one-line report of a failed call; connection-level failures name the address."""
    code = exc.code
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"server error {exc} ({args.address} did not answer within --timeout {args.timeout:g} s)"
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"server error {exc} ({args.address})"
    if code == grpc.StatusCode.NOT_FOUND and args.command == "health":
        return (f"health: the server at {args.address} does not know service {cli_size.name(args.service)} "
                f"(NOT_FOUND)")
    return f"server error {exc}"


def run() -> None:
    """Console-script entry: exit with main's code.

    After a failure the process ends at once, its output flushed: an RPC the server refused early
    can leave a gRPC thread behind that keeps the interpreter from shutting down (once in CI: the
    one-line error printed, then a hang until killed). Everything the command writes is closed by
    the time main returns."""
    code = main()
    if code != EXIT_OK:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:  # None: the process was started with it closed
                    stream.flush()
            except (OSError, ValueError):  # a closed pipe or stream: nothing more can be written
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
