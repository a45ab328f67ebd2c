"""Reading clips for training (and contact sheets of rendered frames).

Inputs: any container PyAV opens (mp4, mov, mkv, webm, avi, gif, ...), a folder of numbered frames, or
one image (single-image mode). Frames come out as uint8 RGB (N, H, W, 3).

Size: by default a clip keeps its size but its long side is capped at `DEFAULT_MAX_SIDE` (256 px, the
paper's 144x256 scale), keeping the aspect ratio and rounding both sides to even numbers (H.264 needs
even sizes). `size=(W, H)` forces an exact size instead; `max_side=0` turns the cap off.

All errors are `VideoError`s whose message names the file and the reason, for one-line CLI reports.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# The frame-file layer lives in the torch-free sinfusion.io (the client reads and writes files too);
# its writers are named here as well because the tools that read clips also write them.
from .io.files import (DEFAULT_FPS, IMAGE_SUFFIXES, VideoError, open_frames, read_image, resize,
                       size_change, write_image, write_video)

__all__ = ["DEFAULT_FPS", "DEFAULT_MAX_SIDE", "Clip", "VideoError", "contact_sheet", "read_clip",
           "target_size", "write_image", "write_video"]

DEFAULT_MAX_SIDE = 256


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


def _numbered(paths: list[Path]) -> list[Path]:
    """Sort frame files by the last number in their names (frame2 before frame10)."""

    def key(p: Path):
        nums = re.findall(r"\d+", p.stem)
        return (int(nums[-1]) if nums else -1, p.name)

    return sorted(paths, key=key)


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
        raw = (read_image(p) for p in files)
    else:
        kind = "image" if path.suffix.lower() in IMAGE_SUFFIXES else "container"
        raw, source_fps = open_frames(path)

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
            raise size_change(path, i, frame, original)
        selected.append(resize(frame, wh))
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
