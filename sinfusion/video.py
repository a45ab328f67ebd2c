"""Reading clips for training and writing rendered frames.

Inputs: any container PyAV opens (mp4, mov, mkv, webm, avi, gif, ...), a folder of numbered frames, or
one image (single-image mode). Frames come out as uint8 RGB (N, H, W, 3).

Size: by default a clip keeps its size but its long side is capped at `DEFAULT_MAX_SIDE` (256 px, the
paper's 144x256 scale), keeping the aspect ratio and rounding both sides to even numbers (H.264 needs
even sizes). `size=(W, H)` forces an exact size instead; `max_side=0` turns the cap off.

All errors are `VideoError`s whose message names the file and the reason, for one-line CLI reports.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from .bundle import atomic_write_bytes

DEFAULT_MAX_SIDE = 256
DEFAULT_FPS = 24.0
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
# Output suffix -> encoder of write_video; clients check a suffix against it before starting a stream.
VIDEO_CODECS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9",
                ".gif": "gif"}


class VideoError(ValueError):
    """An input that cannot be read as a clip; the message names the file and the reason."""


@dataclass
class Clip:
    frames: np.ndarray  # uint8 (N, H, W, 3)
    fps: float
    kind: str  # "container" | "folder" | "image"
    source: dict = field(default_factory=dict)  # facts for the bundle manifest

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])


def target_size(width: int, height: int, max_side: int = DEFAULT_MAX_SIDE,
                size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(W, H) a clip of this size is resized to under the rules in the module docstring."""
    if size is not None:
        w, h = size
        if w < 8 or h < 8:
            raise VideoError(f"size {w}x{h} is too small (minimum 8x8)")
        return int(w), int(h)
    if max_side and max(width, height) > max_side:
        scale = max_side / max(width, height)
        width, height = width * scale, height * scale
    w, h = max(2, int(round(width / 2)) * 2), max(2, int(round(height / 2)) * 2)
    return w, h


def _resize(frame: np.ndarray, wh: tuple[int, int]) -> np.ndarray:
    if (frame.shape[1], frame.shape[0]) == wh:
        return frame
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize(wh, Image.Resampling.LANCZOS))


def _numbered(paths: list[Path]) -> list[Path]:
    """Sort frame files by the last number in their names (frame2 before frame10)."""

    def key(p: Path):
        nums = re.findall(r"\d+", p.stem)
        return (int(nums[-1]) if nums else -1, p.name)

    return sorted(paths, key=key)


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise VideoError(f"{path}: not a readable image ({exc.__class__.__name__})") from None


def _iter_container(path: Path):
    """Yield (rgb frame, fps) from a container PyAV opens."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"{path}: not a video PyAV can open ({exc})") from None
    with container:
        if not container.streams.video:
            raise VideoError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else DEFAULT_FPS
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24"), fps
        except av.error.FFmpegError as exc:
            raise VideoError(f"{path}: decoding failed ({exc})") from None


def read_clip(
    path: str | os.PathLike,
    *,
    max_side: int = DEFAULT_MAX_SIDE,
    size: tuple[int, int] | None = None,
    start: int = 0,
    end: int | None = None,
    stride: int = 1,
    fps: float | None = None,
) -> Clip:
    """Read a clip: frames [start:end:stride] of a container, a folder of frames, or one image.

    Memory: only the selected frames are kept, already resized, as uint8.
    """
    path = Path(path)
    if start < 0 or (end is not None and end <= start) or stride < 1:
        raise VideoError(f"{path}: bad frame range start={start} end={end} stride={stride}")
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")

    if path.is_dir():
        kind = "folder"
        try:
            files = _numbered([p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES])
        except OSError as exc:
            raise VideoError(f"{path}: cannot list the folder ({exc.strerror or exc})") from None
        if not files:
            raise VideoError(f"{path}: folder holds no frames ({', '.join(sorted(IMAGE_SUFFIXES))})")
        source_fps = DEFAULT_FPS
        raw = (_read_image(p) for p in files)
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        kind = "image"
        source_fps = DEFAULT_FPS
        raw = iter([_read_image(path)])
    else:
        kind = "container"
        pairs = _iter_container(path)
        first = next(pairs, None)
        if first is None:
            raise VideoError(f"{path}: contains no frames")
        source_fps = first[1]

        def frames_of(first=first, pairs=pairs):
            yield first[0]
            for f, _ in pairs:
                yield f

        raw = frames_of()

    selected, wh, original = [], None, None
    for i, frame in enumerate(raw):
        if end is not None and i >= end:
            break
        if i < start or (i - start) % stride:
            continue
        if original is None:
            original = (frame.shape[1], frame.shape[0])
            wh = target_size(*original, max_side=max_side, size=size)
        elif (frame.shape[1], frame.shape[0]) != original:
            raise VideoError(f"{path}: frame {i} is {frame.shape[1]}x{frame.shape[0]}, "
                             f"the first is {original[0]}x{original[1]}")
        selected.append(_resize(frame, wh))
    if not selected:
        raise VideoError(f"{path}: no frames in the selected range start={start} end={end}")
    frames = np.stack(selected)
    out_fps = fps if fps else source_fps / stride
    source = {
        "path": str(path),
        "kind": kind,
        "original_width": original[0],
        "original_height": original[1],
        "start": start,
        "end": end,
        "stride": stride,
    }
    return Clip(frames, float(out_fps), kind, source)


def write_video(path: str | os.PathLike, frames, fps: float) -> Path:
    """Encode uint8 RGB frames (iterable of (H, W, 3)) to a file; codec chosen by suffix.

    .mp4/.mov/.mkv: H.264 (yuv420p, plays everywhere); .webm: VP9; .gif: GIF. Written to a temporary
    name and renamed, so a crash never leaves a half-written file under the final name.
    """
    import av

    path = Path(path)
    codecs = VIDEO_CODECS
    codec = codecs.get(path.suffix.lower())
    if codec is None:
        raise VideoError(f"{path}: unsupported output suffix (use one of {', '.join(codecs)})")
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    stream = None
    try:
        with av.open(str(tmp), "w") as container:
            for frame in frames:
                if stream is None:
                    stream = container.add_stream(codec, rate=rate)
                    stream.width, stream.height = frame.shape[1], frame.shape[0]
                    stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
                    if codec == "libx264":
                        stream.options = {"crf": "18", "preset": "fast"}
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                for packet in stream.encode(vf):
                    container.mux(packet)
            if stream is None:
                raise VideoError(f"{path}: no frames to write")
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def contact_sheet(frames: np.ndarray, columns: int = 8, gap: int = 2) -> np.ndarray:
    """Tile uint8 (N, H, W, 3) frames into one image, row by row, with a white gap."""
    n, h, w, _ = frames.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    sheet = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, 3), 255, np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, columns)
        sheet[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = frame
    return sheet


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Atomically write an uint8 (H, W, 3) image; the format follows the suffix (.png, .jpg)."""
    from PIL import Image

    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(Path(path).suffix.lower(), "PNG")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
