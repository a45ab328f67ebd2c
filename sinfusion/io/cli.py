"""The command-line convention shared by every tool (torch-free: the client uses it too).

argparse value types:

Each raises argparse.ArgumentTypeError with a message that names what was expected, so the tools'
one-line error reports say what is wrong with the value.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from .pipes import parse_size


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer >= low (low=0: a count or index; low=1: a positive count)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    return parse


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H) with positive sides."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def size_within(low: int, high: int) -> Callable[[str], tuple[int, int]]:
    """'WxH' with both sides in [low, high]."""

    def parse(text: str) -> tuple[int, int]:
        w, h = size(text)
        if not (low <= w <= high and low <= h <= high):
            raise argparse.ArgumentTypeError(f"size sides must be in [{low}, {high}], got {text!r}")
        return w, h

    return parse


def int_list(text: str) -> tuple[int, ...]:
    """Comma-separated integers, at least one."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def duration(text: str) -> float:
    """A wall-clock duration: '90s', '15m', '1.5h' or plain seconds ('600') -> seconds (> 0)."""
    t = text.strip().lower()
    scale = DURATION_UNITS.get(t[-1:], None)
    number = t[:-1] if scale else t
    try:
        value = float(number) * (scale or 1)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a duration like 90s, 15m or 1h, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def frame_size(text: str) -> tuple[int, int]:
    """'WxH' of frames to read or send: positive sides, at most pipes.MAX_FRAME_PIXELS pixels."""
    from .pipes import parse_frame_size

    try:
        return parse_frame_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
