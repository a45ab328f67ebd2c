"""Frame sizes in the `sinfusion` CLI: input of another size than the model's, and the output's size.

The server works at its model's size: input frames of another size are stretched to it (PIL Lanczos,
aspect ratio not kept) under `--resize resize`, or refused under `--resize refuse`. Its frames come back
at the model's size. The CLI says so on stderr before the first frame, and `--output-size input`
resizes the output back to the input's size here, with the same filter.

Raw RGB24 on stdout has no header: a reader downstream must be told the size out of band, and given
the input's size it would silently misread model-size frames. So raw stdout output whose size would
differ from the input's is refused until `--output-size` says which size is wanted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .messages import Frame

Size = tuple[int, int]  # (width, height)


class SizeChoiceError(ValueError):
    """Raw stdout output of another size than the input's, without --output-size (a usage error)."""


def text(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


def name(value: str, limit: int = 64) -> str:
    """repr() of a user-given name, cut so that a message stays one short line."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"


@dataclass(frozen=True)
class SizePlan:
    model: Size
    input: Size | None  # None: no input frames (generate, extrapolate from a clip frame)
    output: Size
    resize_back: bool  # output frames are resized here from the model's size to the input's
    stretched: bool  # the server stretches input frames to the model's size


def plan(model: Size, input_size: Size | None, output_size: str | None, resize: str,
         raw_stdout: bool, model_name: str) -> SizePlan:
    """What happens to frame sizes, or SizeChoiceError when raw stdout needs an explicit choice.

    output_size: "model", "input" or None (not given: the model's size, refused for raw stdout when it
    differs from the input's). resize: the request's policy, "resize" or "refuse".
    """
    if input_size is None or input_size == model or resize == "refuse":
        # Same size, or nothing to resize: the server refuses another size itself under "refuse".
        return SizePlan(model, input_size, model, False, False)
    if output_size is None and raw_stdout:
        raise SizeChoiceError(
            f"raw RGB24 output would be {text(model)}, the size of model {name(model_name)}, but the input is "
            f"{text(input_size)}, and raw output has no header to say so: add --output-size input (frames "
            f"resized back to {text(input_size)}) or --output-size model (read them as {text(model)})")
    back = output_size == "input"
    return SizePlan(model, input_size, input_size if back else model, back, True)


def notice(p: SizePlan, model_name: str) -> str | None:
    """The one stderr line announcing a resize, or None when sizes agree."""
    if not p.stretched:
        return None
    out = (f"output frames are resized back to {text(p.output)} here (--output-size input)" if p.resize_back
           else f"output is {text(p.output)} (--output-size input resizes it back to {text(p.input)})")
    return (f"input is {text(p.input)}, model {name(model_name)} takes {text(p.model)}: the server resizes "
            f"input frames from {text(p.input)} to {text(p.model)} by --resize resize (Lanczos, aspect ratio "
            f"not kept; --resize refuse refuses them); {out}")


def resized(frames: Iterable[Frame], size: Size) -> Iterator[Frame]:
    """The frames with their images resized to `size` (PIL Lanczos, as the server resizes input)."""
    from PIL import Image

    for frame in frames:
        if (frame.width, frame.height) == size:
            yield frame
        else:
            image = np.asarray(Image.fromarray(frame.image).resize(size, Image.Resampling.LANCZOS))
            yield dataclasses.replace(frame, image=image)
