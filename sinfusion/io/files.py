"""Frame files: decoding a video or image file to uint8 RGB frames, encoding frames to one.

Any container PyAV opens (mp4, mov, mkv, webm, avi, gif, ...) or an image PIL opens; frames are uint8
RGB (H, W, 3). Writes are atomic (a temporary name, renamed when complete). Every error is a
`VideoError` whose message names the file and the reason, for one-line CLI reports.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from .atomic import atomic_write_bytes

DEFAULT_FPS = 24.0  # the rate of inputs that do not state one (images, folders of frames)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
# Output suffix -> encoder of write_video; clients check a suffix against it before starting a stream.
VIDEO_CODECS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9",
                ".gif": "gif"}


class VideoError(ValueError):
    """An input that cannot be read as a clip; the message names the file and the reason."""


def resize(frame: np.ndarray, wh: tuple[int, int]) -> np.ndarray:
    """A uint8 frame resized to (width, height) with PIL Lanczos (unchanged when it has that size)."""
    if (frame.shape[1], frame.shape[0]) == wh:
        return frame
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize(wh, Image.Resampling.LANCZOS))


def read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise VideoError(f"{path}: not a readable image ({exc.__class__.__name__})") from None


def _decode(path: Path) -> Iterator[tuple[np.ndarray, float]]:
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


def open_frames(path: Path) -> tuple[Iterator[np.ndarray], float]:
    """An image file or a video's frames, decoded as they are taken, and its frame rate. A video
    that cannot be opened or holds no frame is refused here, before any frame is taken."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return iter([read_image(path)]), DEFAULT_FPS
    pairs = _decode(path)
    first = next(pairs, None)
    if first is None:
        raise VideoError(f"{path}: contains no frames")

    def frames() -> Iterator[np.ndarray]:
        yield first[0]
        for frame, _ in pairs:
            yield frame

    return frames(), first[1]


def size_change(path: Path, index: int, frame: np.ndarray, first: tuple[int, int]) -> VideoError:
    """The error for frame `index` of another size than the first (width, height)."""
    return VideoError(f"{path}: frame {index} is {frame.shape[1]}x{frame.shape[0]}, "
                      f"the first is {first[0]}x{first[1]}")


def read_frames(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Every frame of an image file or a video, at its size, uint8 (N, H, W, 3), and its frame rate."""
    path = Path(path)
    frames, fps = open_frames(path)
    out: list[np.ndarray] = []
    for i, frame in enumerate(frames):
        if out and frame.shape != out[0].shape:
            raise size_change(path, i, frame, (out[0].shape[1], out[0].shape[0]))
        out.append(frame)
    return np.stack(out), fps


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


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Atomically write an uint8 (H, W, 3) image; the format follows the suffix (.png, .jpg)."""
    from PIL import Image

    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(Path(path).suffix.lower(), "PNG")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
