"""Still-image output of the image applications (projection, visual summary), shared by both CLIs
(their --strength and --scales values are sinfusion.io.cli's).

One path holds one image. Commands that make several (a summary's steps, a projection's
intermediate steps, a projected frame sequence) write to a numbered pattern, as ffmpeg's image2
muxer does: `step-%03d.png` -> step-000.png, step-001.png, ... The format follows the suffix
(.png, .jpg, .jpeg). `sizes_sheet` lays frames of different sizes side by side for a contact sheet.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

STILL_SUFFIXES = (".png", ".jpg", ".jpeg")
_PATTERN = re.compile(r"%0?\d*d")


class StillsError(ValueError):
    """A still-image output the command cannot write as asked (one path, several images)."""


def is_still(path: str | Path) -> bool:
    return Path(path).suffix.lower() in STILL_SUFFIXES


def is_pattern(path: str | Path) -> bool:
    """True when the file name holds one %d field (e.g. %d, %03d)."""
    return len(_PATTERN.findall(Path(path).name)) == 1


def numbered(path: str | Path, index: int) -> Path:
    p = Path(path)
    return p.with_name(_PATTERN.sub(lambda m: m.group(0) % index, p.name))


def one_image_problem(path: str | Path, count: int | None) -> str | None:
    """Why `path` cannot take `count` images (None: it can; count None: not known yet)."""
    if is_pattern(path) or count == 1 or count is None:
        return None
    p = Path(path)
    return (f"{p} holds one image but this makes {count}: give a numbered pattern such as "
            f"{p.with_name(p.stem + '-%03d' + p.suffix)}")


def write_stills(path: str | Path, images: Iterable[np.ndarray]) -> Iterator[Path]:
    """Write uint8 (H, W, 3) images as they come (atomically each); yields each path written.

    Without a pattern a second image raises StillsError (the first stays written).
    """
    from .files import write_image

    for i, image in enumerate(images):
        if is_pattern(path):
            target = numbered(path, i)
        elif i == 0:
            target = Path(path)
        else:
            p = Path(path)
            raise StillsError(f"{p} holds one image but a second one came: give a numbered "
                              f"pattern such as {p.with_name(p.stem + '-%03d' + p.suffix)}")
        yield write_image(target, np.asarray(image))


def sizes_sheet(images: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """uint8 images of any sizes in one row, top-aligned on white, `gap` px apart."""
    height = max(im.shape[0] for im in images)
    width = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    sheet = np.full((height, width, 3), 255, np.uint8)
    x = 0
    for im in images:
        sheet[: im.shape[0], x: x + im.shape[1]] = im
        x += im.shape[1] + gap
    return sheet
