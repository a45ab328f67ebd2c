"""The command-line convention of every tool (trainer, sinfusion-export, sinfusion-server,
sinfusion, sinfusion-quality); torch-free, the client uses it too.

- Errors: one line on stderr, `PROG: message`; a command line argparse refuses adds
  `(see PROG --help)`. Bugs keep their traceback (the `sinfusion` client reports them in one line that
  names the exception, its pipes' contract).
- Exit codes: the table in docs/cli.md, EXIT_* below; the client adds its own above 4.
- `Parser` is every tool's argparse parser; the value types below raise argparse.ArgumentTypeError
  with a message that names what was expected.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

from .pipes import parse_frame_size, parse_size

EXIT_OK = 0
EXIT_FAILED = 1  # the work could not be done (the message says why), or a bug (with its traceback)
EXIT_USAGE = 2  # the command line: an unknown flag, a bad value, flags that do not go together
EXIT_INPUT = 3  # something the command reads (clip, image, bundle, folder, stream) is missing or unusable
EXIT_OUTPUT = 4  # something the command writes cannot be written
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)


class UsageError(ValueError):
    """A command line the tool refuses: exit 2. `prog` names the (sub)command when it is not the tool."""

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog


class InputError(ValueError):
    """Something the command reads (a file, a folder, a stream) that it cannot use: exit 3."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are UsageErrors (one line, pointing at --help) instead of a usage dump
    and an exit, so that each tool's main reports them like its other errors. Subcommands' parsers
    are Parsers too (argparse gives add_subparsers the parser's own class)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)", self.prog)


def counted(n: int, noun: str) -> str:
    """'1 frame', '3 frames': a count in a message."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def fail(prog: str, message: object, code: int) -> int:
    """Report a failure as the convention's one stderr line; returns `code` for main to exit with."""
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    print(f"{prog}: {line}", file=sys.stderr, flush=True)
    return code


def usage_failed(prog: str, error: UsageError) -> int:
    return fail(error.prog or prog, error, EXIT_USAGE)


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


def _number(text: str) -> float:
    """`text` as a float; NaN when it is none, which every range check below refuses."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _checked(value: float, ok: bool, expected: str, text: str) -> float:
    if not ok:
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
    return value


def _argument(parse: Callable[[str], tuple[int, int]], text: str) -> tuple[int, int]:
    """A parser's ValueError as argparse's error, its message kept."""
    try:
        return parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _number(text)
    return _checked(value, value > 0 and math.isfinite(value), "a finite number > 0", text)


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _number(text)
    return _checked(value, value >= 0 and math.isfinite(value), "a finite number >= 0", text)


def strength_arg(text: str) -> float:
    """--strength: a number in [0, 1] (sinfusion.sampling.strength_level)."""
    value = _number(text)
    return _checked(value, 0.0 <= value <= 1.0, "a number in [0, 1]", text)


def weight_arg(text: str) -> float:
    """A share in (0, 1], such as --correction-weight."""
    value = _number(text)
    return _checked(value, 0.0 < value <= 1.0, "a number in (0, 1]", text)


def pull_arg(text: str) -> float:
    """A share in [0, 1), such as --layout-pull (0: none)."""
    value = _number(text)
    return _checked(value, 0.0 <= value < 1.0, "a number in [0, 1)", text)


def scales_arg(text: str) -> list[float]:
    """--scales: comma-separated numbers in (0, 1], e.g. 0.9,0.8,0.7."""
    values = []
    for part in text.split(","):
        value = _number(part)
        if not 0.0 < value <= 1.0:
            raise argparse.ArgumentTypeError(f"must be comma-separated numbers in (0, 1], "
                                             f"got {part.strip()!r} in {text!r}")
        values.append(value)
    return values


def size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H) with positive sides."""
    return _argument(parse_size, text)


def size_within(low: int, high: int) -> Callable[[str], tuple[int, int]]:
    """'WxH' with both sides in [low, high]."""

    def parse(text: str) -> tuple[int, int]:
        w, h = size(text)
        if not (low <= w <= high and low <= h <= high):
            raise argparse.ArgumentTypeError(f"size sides must be in [{low}, {high}], got {text!r}")
        return w, h

    return parse


def frame_size(text: str) -> tuple[int, int]:
    """'WxH' of frames to read or send: positive sides, at most pipes.MAX_FRAME_PIXELS pixels."""
    return _argument(parse_frame_size, text)


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
    value = _number(t[:-1] if scale else t) * (scale or 1)
    return _checked(value, value > 0 and math.isfinite(value), "a duration like 90s, 15m or 1h", text)


# --- the sampling flags of `sinfusion`, `trainer sample` and `sinfusion-quality` -----------------------

# The paper's sampler (appendix D), as flag values: sinfusion.sampling.PAPER_SAMPLING.
PAPER_SAMPLER = {"steps": 0, "method": "ddpm", "correction_steps": 3}


def add_sampling_args(parser, correction: bool = True, steps_flag: str = "--steps") -> None:
    """--steps (or steps_flag), --method, --correction-steps and --paper-sampler; None = the default."""
    parser.add_argument(steps_flag, dest="steps", type=int_at_least(0), default=None,
                        help="denoising steps per frame (0 = all T; default: 3 with ddim, all with ddpm)")
    parser.add_argument("--method", choices=("ddpm", "ddim"), default=None,
                        help="ddim (default: deterministic, few steps) or ddpm (the paper's, ancestral)")
    if correction:
        parser.add_argument("--correction-steps", type=int_at_least(0), default=None,
                            help="Projector correction level T_corr (default: the model's; 0 = off)")
    parser.add_argument("--paper-sampler", action="store_true",
                        help="the paper's sampler: ddpm over every step, correction 3 (about 10x slower)")


def sampling_choice(args: argparse.Namespace) -> dict:
    """{steps, method, correction_steps} from the flags of add_sampling_args, None where not given."""
    chosen = {name: getattr(args, name, None) for name in PAPER_SAMPLER}
    if not args.paper_sampler:
        return chosen
    given = [name for name, value in chosen.items() if value is not None]
    if given:
        raise UsageError(f"--paper-sampler sets --steps, --method and --correction-steps; give it or "
                         f"them, not both (got --{given[0].replace('_', '-')})")
    return {name: value if hasattr(args, name) else None for name, value in PAPER_SAMPLER.items()}
