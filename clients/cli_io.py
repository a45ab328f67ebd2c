"""Frame sources and sinks of the `sinfusion` CLI: stdin/stdout pipes and files.

Sources: stdin as y4m (recognised by its `YUV4MPEG2 ` header) or raw RGB24 (size from --size), or a
file: .y4m and .rgb/.raw read with sinfusion.io.pipes, anything else decoded by PyAV (sinfusion.io.files).
Sinks: stdout as y4m or raw RGB24, flushed frame by frame; or a file chosen by suffix: .y4m, .rgb/.raw,
or a video (.mp4 .mov .mkv .webm .gif) encoded by sinfusion.io.files.write_video. Files are written under
a temporary name and renamed when complete, so a failed call never leaves a half file behind.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from sinfusion.io.cli import InputError
from sinfusion.io.files import VIDEO_CODECS, VideoError, read_frames, write_video
from sinfusion.io.pipes import RawReader, RawWriter, Y4MReader, Y4MWriter, sniff

RAW_SUFFIXES = {".rgb", ".raw"}
Y4M_SUFFIXES = {".y4m"}
CHROMA = {"444": "444", "422": "422", "420": "420jpeg"}  # --chroma -> y4m colorspace


class OutputError(ValueError):
    """An output that cannot be written (unsupported suffix, unwritable folder)."""


@dataclass
class Source:
    frames: Iterator[np.ndarray]  # uint8 (H, W, 3), read lazily
    fps: float | None  # None when the input does not say (raw stdin without --input-fps)
    description: str


def open_source(path: str | None, size: tuple[int, int] | None, fps: float | None,
                stdin: BinaryIO | None = None) -> Source:
    """Open the CLI's input: `path`, or stdin when path is None or '-'."""
    if path in (None, "-"):
        if stdin is None and sys.stdin is None:  # started with stdin closed (`<&-`)
            raise InputError("stdin is closed: pipe frames in or give --input FILE")
        stream = stdin if stdin is not None else sys.stdin.buffer
        if stream.isatty():
            raise InputError("stdin is a terminal: pipe frames in (e.g. ffmpeg -i in.mp4 -f yuv4mpegpipe - "
                             "| sinfusion ...) or give --input FILE")
        is_y4m, source = sniff(stream, "stdin")
        if is_y4m:
            reader = Y4MReader(source)
            return Source(iter(reader), fps or reader.fps, f"stdin (y4m {reader.width}x{reader.height})")
        head = source.pending
        if not head:
            raise InputError("stdin is empty: expected y4m or raw RGB24 frames")
        if size is None:
            raise InputError(f"stdin is not a y4m stream (it starts with {head!r}): for raw RGB24 frames "
                             f"give --size WxH")
        return Source(iter(RawReader(source, *size)), fps, f"stdin (raw RGB24 {size[0]}x{size[1]})")

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix in Y4M_SUFFIXES or suffix in RAW_SUFFIXES:
        if suffix in RAW_SUFFIXES and size is None:
            raise InputError(f"{p}: raw RGB24 file needs --size WxH")
        try:
            stream = open(p, "rb")  # closed by the generator below when exhausted or closed
        except OSError as exc:
            raise InputError(f"{p}: cannot read ({exc.strerror})") from None
        try:
            reader = (Y4MReader(stream, name=str(p)) if suffix in Y4M_SUFFIXES
                      else RawReader(stream, *size, str(p)))
        except Exception:
            stream.close()
            raise
        rate = fps or getattr(reader, "fps", None)
        return Source(_closing(reader, stream), rate, str(p))

    try:
        frames, rate = read_frames(p)  # at the file's size: the server resizes if it must
    except VideoError as exc:
        raise InputError(str(exc)) from None
    return Source(iter(frames), fps or rate, str(p))


def _closing(frames: Iterable[np.ndarray], stream: BinaryIO) -> Iterator[np.ndarray]:
    with stream:
        yield from frames


def check_output(path: str | None) -> None:
    """Refuse a bad output before any frame is asked for."""
    if path in (None, "-"):
        if sys.stdout is None:  # started with stdout closed (`>&-`)
            raise OutputError("stdout is closed: give --output FILE")
        if sys.stdout.isatty():
            raise OutputError("stdout is a terminal: pipe it (e.g. | ffplay -) or give --output FILE")
        return
    p = Path(path)
    suffix = p.suffix.lower()
    allowed = sorted(VIDEO_CODECS) + sorted(Y4M_SUFFIXES) + sorted(RAW_SUFFIXES)
    if suffix not in allowed:
        raise OutputError(f"{p}: unsupported output suffix {suffix or '(none)'} "
                          f"(use one of {', '.join(allowed)})")
    if not p.parent.is_dir() and not p.parent == Path(""):
        raise OutputError(f"{p}: folder {p.parent} does not exist")


def write_frames(frames: Iterable[np.ndarray], path: str | None, fmt: str, fps: float | None,
                 chroma: str = "444") -> None:
    """Write frames to stdout (`fmt` raw or y4m) or to `path` (format by suffix), as they arrive."""
    if path in (None, "-"):
        out = sys.stdout.buffer
        writer = Y4MWriter(out, fps, CHROMA[chroma]) if fmt == "y4m" else RawWriter(out)
        for frame in frames:
            writer.write(frame)
        return

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in Y4M_SUFFIXES and suffix not in RAW_SUFFIXES:
        write_video(p, frames, fps or 24.0)  # atomic: temporary name, renamed when complete
        return
    tmp = p.with_name(f".{p.name}.tmp")
    try:
        with open(tmp, "wb") as out:
            writer = Y4MWriter(out, fps, CHROMA[chroma], flush=False) if suffix in Y4M_SUFFIXES \
                else RawWriter(out, flush=False)
            for frame in frames:
                writer.write(frame)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["OutputError", "Source", "check_output", "open_source", "write_frames"]
