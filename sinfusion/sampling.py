"""The sampling loops, written once for every runtime (paper sections 5-6, appendix D).

A loop is a Python generator. It yields `StepRequest`s (one diffusion step of one sample: arrays without
a batch axis) and receives each step's output back through `send`; it yields `Frame`s when a frame is
final. A loop over a streamed input (`upsample` without its frames) yields NEXT_INPUT and receives
its next input frame the same way. Whoever drives it decides how requests reach an engine: `run` executes them one by one (the
trainer's `sample` command), `lockstep` batches the requests of several loops (quality measurements),
the server's scheduler stacks the pending requests of many streams into one batched engine call; all
of them advance loops through one `Stepper`. The loop owns every random draw, from the numpy Generator it is given, so a seeded
stream produces the same frames on any runtime, alone or batched.

Frames inside the loops are float32 (3, H, W) in [-1, 1] (see sinfusion.frames). They are numpy
arrays, except with a device-resident runtime (runtimes/torch_compiled.py), whose step outputs are
device tensors: the loop passes each output back unchanged into its next request and does what little
arithmetic it does itself through sinfusion.arrays, so a frame stays on the device between its steps.
`Stepper` hands frames out as numpy (or, for the server, leaves the uint8 conversion to the device).

A runtime is a `Denoiser`: a callable (role, x, cond, t, k, coef, noise) -> x_next over batched arrays
that computes one step of `sinfusion.network.DiffusionStep`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

import numpy as np

from . import arrays
from .frames import to_model
from .schedule import Schedule

METHODS = ("ddpm", "ddim")
# The default sampler of the server, the client CLI and `trainer sample`: DDIM with few steps is as
# good as the paper's 50 ancestral steps on next-frame prediction and long extrapolation, at a
# fraction of the cost (bench/bench_sampler.py, docs/benchmarks.md). PAPER_SAMPLING is one flag away.
DEFAULT_METHOD = "ddim"
DEFAULT_DDIM_STEPS = 3  # with the bundle's correction as good as 4 and 1.5x faster (docs/benchmarks.md)


# Loops whose image the Projector draws from noise (a single image's generate) or from a noise level
# (project, summarize) keep the paper's DDPM unless asked: the benchmark measured Predictor frames,
# not those. A video's Generate samples as Extrapolate does (generate_defaults).
PAPER_DEFAULT_LOOPS = ("generate", "project", "summarize")


def default_method(loop: str = "extrapolate") -> str:
    """The sampling method a loop (extrapolate, upsample, generate, project, summarize) gets by default."""
    return "ddpm" if loop in PAPER_DEFAULT_LOOPS else DEFAULT_METHOD


# Loops whose frames each come from real frames, so that nothing accumulates for the Projector's
# correction to stop: a bundle's T_corr is not applied to them unless asked. Correcting in-between
# frames at level 1 cost the cpu recipe's Interpolator 2.2 dB, turning a win over the blend into a
# loss (docs/training.md, "Projector correction").
UNCORRECTED_LOOPS = ("upsample",)


def loop_correction(loop: str, bundle_default: int) -> int:
    """T_corr a loop gets when a request names none: the bundle's, except for UNCORRECTED_LOOPS."""
    return 0 if loop in UNCORRECTED_LOOPS else bundle_default


def default_steps(method: str) -> int:
    """Steps per frame when only the method is given: DDIM's default, or all T for DDPM (the paper)."""
    return DEFAULT_DDIM_STEPS if method == "ddim" else 0


class Denoiser(Protocol):
    """A runtime: one batched diffusion step of a role's network.

    Arguments are batched: x (B,3,H,W), cond (B,Cc,H,W) or None, t (B,), k (B,), coef (B,5),
    noise (B,3,H,W), all float32. Returns x_next (B,3,H,W) float32.
    """

    def __call__(self, role: str, x: np.ndarray, cond: np.ndarray | None, t: np.ndarray,
                 k: np.ndarray, coef: np.ndarray, noise: np.ndarray) -> np.ndarray: ...


@dataclass
class StepRequest:
    """One pending diffusion step of one sample (no batch axis)."""

    role: str
    x: np.ndarray  # (3, H, W)
    cond: np.ndarray | None  # (Cc, H, W) or None
    t: float
    k: float
    coef: np.ndarray  # (5,), see network.COEF_NAMES
    noise: np.ndarray  # (3, H, W)

    @property
    def batch_key(self) -> tuple:
        """Requests with equal keys can share one engine call."""
        return (self.role, self.x.shape)


class NextInput:
    """A streamed-input loop's request for its next input frame: its driver sends the frame (model
    layout), or None when the input has ended."""


NEXT_INPUT = NextInput()


@dataclass
class Frame:
    """A finished frame of a stream."""

    index: int  # position in the stream's output, from 0
    image: np.ndarray  # (3, H, W) float32 in [-1, 1]; a device tensor only inside a Stepper
    synthesized: bool = True


@dataclass(frozen=True)
class RoleSampling:
    """What the loop needs to know about one role's trained network."""

    schedule: Schedule
    target: str  # "eps" or "x0": what the network predicts


@dataclass(frozen=True)
class SamplingOptions:
    """User-facing knobs of the loops; the defaults are the service's (PAPER_SAMPLING: the paper's)."""

    steps: int = DEFAULT_DDIM_STEPS  # denoising steps per frame; 0 = all T of the schedule
    method: str = DEFAULT_METHOD  # "ddpm": ancestral (paper); "ddim": deterministic, strided
    correction_steps: int = 3  # T_corr: noise a predicted frame to this level, then denoise; 0 = off

    @classmethod
    def chosen(cls, steps: int | None = None, method: str | None = None,
               correction_steps: int | None = None, default_correction: int = 3,
               loop: str = "extrapolate") -> SamplingOptions:
        """What a user asked for, the defaults where None: the loop's method (default_method), its
        default steps, `default_correction` (the bundle's T_corr) where the loop takes it."""
        method = default_method(loop) if method is None else method
        steps = default_steps(method) if steps is None else steps
        if correction_steps is None:
            correction_steps = loop_correction(loop, default_correction)
        return cls(steps, method, correction_steps)

    def validate(self, schedule_steps: int) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0 <= self.steps <= schedule_steps:
            raise ValueError(f"steps must be in [0, {schedule_steps}], got {self.steps}")
        if not 0 <= self.correction_steps <= schedule_steps:
            raise ValueError(
                f"correction_steps must be in [0, {schedule_steps}], got {self.correction_steps}"
            )


# The paper's sampler (appendix D): every one of the T ancestral steps, then T_corr = 3.
PAPER_SAMPLING = SamplingOptions(steps=0, method="ddpm", correction_steps=3)


MAX_CORRECTION_PASSES = 8  # a bound on a bundle's corrections per frame (the cpu preset uses 1, after a coarse one)
MAX_PREDICTOR_MARGIN = 64  # px: a bound on a bundle's predictor_margin (the cpu preset uses 8)
MAX_COARSE_LEVEL = 1000  # the longest schedule a config may ask for (TrainConfig.schedule_steps)
MAX_LAYOUT_SIGMA = 64.0  # px: a bound on a bundle's layout_sigma (the cpu preset uses 0.6 at 128x72)
MAX_LAYOUT_WINDOW = 16  # px: a bound on a bundle's layout_window (the cpu preset uses 3)
# The clip layouts a stream is held to (layout_window > 0) are at most this many of its frames,
# evenly spaced: each held frame compares itself with every one (a few ms at 128x72 for 64).
MAX_HELD_LAYOUTS = 64


def serving_problems(weight: float, passes: int, margin: int = 0, coarse_level: int = 0,
                     coarse_weight: float = 1.0, schedule_steps: int | None = None,
                     layout_pull: float = 0.0, layout_sigma: float = 0.0,
                     layout_motion: float = 0.0, layout_window: int = 0) -> list[str]:
    """What is wrong with how a bundle serves frames (its or a training config's correction weight,
    pass count, Predictor margin, coarse correction, whose level must lie on the Projector's
    schedule of `schedule_steps` levels where that is known, and layout hold); empty when all are
    valid."""
    problems = []
    if not 0.0 <= layout_pull < 1.0:
        problems.append(f"layout_pull must be in [0, 1), got {layout_pull}")
    if layout_pull > 0 and not 0.0 < layout_sigma <= MAX_LAYOUT_SIGMA:
        problems.append(f"layout_sigma must be in (0, {MAX_LAYOUT_SIGMA:g}] px where layout_pull "
                        f"is above 0, got {layout_sigma}")
    if not 0.0 <= layout_motion <= 2.0:
        problems.append(f"layout_motion must be in [0, 2], got {layout_motion}")
    if not 0 <= layout_window <= MAX_LAYOUT_WINDOW:
        problems.append(f"layout_window must be in [0, {MAX_LAYOUT_WINDOW}] px, got {layout_window}")
    top = MAX_COARSE_LEVEL if schedule_steps is None else schedule_steps
    if not 0 <= coarse_level <= top:
        problems.append(f"coarse_correction_level must be in [0, {top}], got {coarse_level}")
    if not 0.0 < coarse_weight <= 1.0:
        problems.append(f"coarse_correction_weight must be in (0, 1], got {coarse_weight}")
    if not 0.0 < weight <= 1.0:
        problems.append(f"correction_weight must be in (0, 1], got {weight}")
    if not 1 <= passes <= MAX_CORRECTION_PASSES:
        problems.append(f"correction_passes must be in [1, {MAX_CORRECTION_PASSES}], got {passes}")
    if not 0 <= margin <= MAX_PREDICTOR_MARGIN:
        problems.append(f"predictor_margin must be in [0, {MAX_PREDICTOR_MARGIN}] px, got {margin}")
    return problems


def options_record(options: SamplingOptions, sampling: BundleSampling) -> dict:
    """What a measurement records of its sampler: the options, the bundle's correction weight,
    passes and coarse correction where frames were corrected, and its Predictor margin where it
    has one."""
    record = asdict(options)
    if options.correction_steps > 0:
        record["correction_weight"] = sampling.correction_weight
        record["correction_passes"] = sampling.correction_passes
        if sampling.coarse_level(options):
            record["coarse_correction_level"] = sampling.coarse_correction_level
            record["coarse_correction_weight"] = sampling.coarse_correction_weight
        if sampling.layout_pull:
            record["layout_pull"] = sampling.layout_pull
            record["layout_sigma"] = sampling.layout_sigma
            record["layout_motion"] = sampling.layout_motion
            record["layout_window"] = sampling.layout_window
    if sampling.predictor_margin:
        record["predictor_margin"] = sampling.predictor_margin
    return record


@dataclass(frozen=True)
class Palette:
    """A clip's colour statistics in the networks' [-1, 1] scale: each channel's mean and standard
    deviation over a frame, and the 3 x 3 colour covariance over a frame, averaged over the clip's
    frames (what a frame of the clip looks like). `cov` is None in bundles recorded before it."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    cov: tuple[tuple[float, float, float], ...] | None = None

    @classmethod
    def of(cls, frames: np.ndarray) -> Palette:
        """The palette of uint8 frames (N, H, W, 3), a frame at a time (a long clip is not copied)."""
        means, stds, covs = [], [], []
        for frame in frames:
            x = frame.reshape(-1, 3).astype(np.float64) / 127.5 - 1.0
            means.append(x.mean(axis=0))
            stds.append(x.std(axis=0))
            centred = x - means[-1]
            covs.append(centred.T @ centred / len(x))

        def rounded(a: np.ndarray):
            return tuple(round(float(v), 6) for v in a)

        return cls(rounded(np.mean(means, axis=0)), rounded(np.mean(stds, axis=0)),
                   tuple(rounded(row) for row in np.mean(covs, axis=0)))

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std),
                **({"cov": [list(row) for row in self.cov]} if self.cov is not None else {})}

    @classmethod
    def from_dict(cls, d: dict) -> Palette:
        mean, std = (tuple(float(v) for v in d[k]) for k in ("mean", "std"))
        if len(mean) != 3 or len(std) != 3 or min(std) < 0:
            raise ValueError(f"a palette needs 3 means and 3 non-negative deviations, got {d}")
        cov = None
        if d.get("cov") is not None:
            cov = tuple(tuple(float(v) for v in row) for row in d["cov"])
            c = np.asarray(cov)
            if c.shape != (3, 3) or not np.allclose(c, c.T, atol=1e-6) or min(np.diag(c)) < 0:
                raise ValueError(f"a palette's cov must be a symmetric 3 x 3 covariance, got {d['cov']}")
        return cls(mean, std, cov)


@dataclass(frozen=True)
class BundleSampling:
    """The sampling facts of a bundle's roles, by role (only the trained ones are present), the
    clip's palette (None in bundles written before it was recorded), how much of the Projector's
    change a correction keeps (1 = all of it, the paper's; a cpu bundle keeps half), how many
    times a frame is corrected at T_corr (1, the paper's), the Predictor's margin (0, the paper's;
    see `predict_frame`), the coarse correction before those (level 0: none, the paper's; see
    `correct`) and the layout hold of a stream's corrected frames (pull 0: none, the paper's; see
    `correct`): to its start frame's layout (window 0) or to the clip's, pixel by pixel."""

    roles: dict[str, RoleSampling] = field(default_factory=dict)
    palette: Palette | None = None
    correction_weight: float = 1.0
    correction_passes: int = 1  # 1..MAX_CORRECTION_PASSES
    predictor_margin: int = 0  # px, 0..MAX_PREDICTOR_MARGIN
    coarse_correction_level: int = 0  # 0: none
    coarse_correction_weight: float = 1.0
    layout_pull: float = 0.0  # 0: none
    layout_sigma: float = 0.0  # px at the bundle's frame size
    layout_motion: float = 0.0  # 0: held everywhere alike
    layout_window: int = 0  # px: 0 holds the start frame's layout, above 0 it and the clip's (`correct`)
    # Each pixel's pull (H, W), from the clip (`layout_weights`); None: no frame is held
    layout_weights: np.ndarray | None = field(default=None, compare=False, repr=False)
    # The clip's layouts (N, 3, H, W) held to where layout_window is above 0 (`clip_layouts`)
    clip_layouts: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __getitem__(self, role: str) -> RoleSampling:
        if role not in self.roles:
            raise KeyError(f"this bundle has no trained {role}")
        return self.roles[role]

    def coarse_level(self, options: SamplingOptions) -> int:
        """The level of the coarse correction a frame corrected with `options` gets: the bundle's,
        where it is above the request's T_corr (a request correcting at or above it, or not at all,
        gets none)."""
        level = self.coarse_correction_level
        return level if options.correction_steps > 0 and level > options.correction_steps else 0

    def canvas(self, role: str, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the arrays a role's network steps take for frames of this size: the
        Predictor's are larger by its margin on every side (its engines are exported at it)."""
        return self.sizes(role, height, width)[0]

    def sizes(self, role: str, height: int, width: int) -> list[tuple[int, int]]:
        """Every (height, width) a role's steps take for frames of this size, `canvas` first: the
        Projector also works at the Predictor's canvas for the coarse correction."""
        m = self.predictor_margin
        grown = (height + 2 * m, width + 2 * m)
        if role == "predictor":
            return [grown]
        if role == "projector" and m and self.coarse_correction_level:
            return [(height, width), grown]
        return [(height, width)]


# --- per-step coefficients -------------------------------------------------------------------------

def _x0_coefs(schedule: Schedule, target: str, t: int) -> tuple[float, float]:
    """(p, q) with x0_hat = p * x_t + q * net_out."""
    if target == "x0":
        return 0.0, 1.0
    if target == "eps":
        ab = schedule.alpha_bars[t]
        return 1.0 / np.sqrt(ab), -np.sqrt(1.0 - ab) / np.sqrt(ab)
    raise ValueError(f"unknown prediction target {target!r}; valid targets: eps, x0")


def timesteps(start: int, steps: int) -> list[int]:
    """Descending noise levels from `start` to 0 visiting `steps` levels (0 = every level)."""
    if start < 1:
        return [0]
    n = start if steps <= 0 or steps >= start else steps
    levels = np.round(np.linspace(start, 0, n + 1)).astype(int)
    return [int(v) for v in levels]


def step_plan(
    schedule: Schedule, target: str, start: int, steps: int = 0, method: str = "ddpm"
) -> list[tuple[int, np.ndarray]]:
    """[(t, coef)] for denoising from level `start` to 0.

    ddpm: ancestral sampling from the posterior q(x_s | x_t, x0_hat) (respaced when s < t-1; with
    s = t-1 it is the paper's DDPM step). ddim: the deterministic DDIM update (eta = 0).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    ab = schedule.alpha_bars
    levels = timesteps(start, steps)
    plan = []
    for t, s in zip(levels[:-1], levels[1:]):
        p, q = _x0_coefs(schedule, target, t)
        if s == 0:
            a, b, c = 1.0, 0.0, 0.0
        elif method == "ddpm":
            beta = 1.0 - ab[t] / ab[s]
            a = np.sqrt(ab[s]) * beta / (1.0 - ab[t])
            b = np.sqrt(ab[t] / ab[s]) * (1.0 - ab[s]) / (1.0 - ab[t])
            c = np.sqrt(beta * (1.0 - ab[s]) / (1.0 - ab[t]))
        else:
            b = np.sqrt(1.0 - ab[s]) / np.sqrt(1.0 - ab[t])
            a = np.sqrt(ab[s]) - b * np.sqrt(ab[t])
            c = 0.0
        plan.append((t, np.array([p, q, a, b, c], dtype=np.float32)))
    return plan


def noise_to_level(x0: np.ndarray, schedule: Schedule, t: int, rng: np.random.Generator) -> np.ndarray:
    """Forward process, paper eq. (1): sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.

    x0 may be a device tensor (a predicted frame of a device-resident runtime): the noise, drawn from
    the stream's generator as always, is then uploaded and the frame noised where it is.
    """
    eps = rng.standard_normal(tuple(x0.shape), dtype=np.float32)
    ab = schedule.alpha_bars[t]
    if arrays.is_host(x0):
        return (np.sqrt(ab) * x0 + np.sqrt(1.0 - ab) * eps).astype(np.float32)
    return float(np.sqrt(ab)) * x0 + float(np.sqrt(1.0 - ab)) * arrays.like(eps, x0)


# --- the loops ---------------------------------------------------------------------------------------

Loop = Generator["StepRequest | Frame | NextInput", "np.ndarray | None", "np.ndarray"]


def denoise(
    role: str,
    rs: RoleSampling,
    x: np.ndarray,
    rng: np.random.Generator,
    *,
    start: int,
    steps: int = 0,
    method: str = "ddpm",
    cond: np.ndarray | None = None,
    k: float = 0.0,
) -> Loop:
    """Denoise x from noise level `start` to a clean frame, one StepRequest per step."""
    # Noise stays a host array drawn step by step: a device runtime uploads it with the step's other
    # inputs, while the device still runs the previous step (drawing a whole frame's noise up front
    # would leave the device idle for the draw: 53 draws are ~40 ms at 256x144).
    zeros = None
    shape = tuple(x.shape)
    for t, coef in step_plan(rs.schedule, rs.target, start, steps, method):
        if coef[4] != 0.0:
            noise = rng.standard_normal(shape, dtype=np.float32)
        else:  # deterministic step: no draw, so the random sequence only depends on stochastic steps
            zeros = np.zeros(shape, np.float32) if zeros is None else zeros
            noise = zeros
        x = yield StepRequest(role, x, cond, float(t), float(k), coef, noise)
    return x


def generate_frame(sampling: BundleSampling, shape: tuple[int, int], rng: np.random.Generator,
                   options: SamplingOptions) -> Loop:
    """A new frame from pure noise with the Projector (paper section 6.2 / first frame of 6.1).

    Its colours are then set to the clip's palette (mean colour and colour covariance; each channel's
    mean and contrast in bundles recorded before the covariance), when the bundle records one: a
    Projector trained for minutes draws the clip's textures but not its exposure, and a generated
    clip keeps its first frame's colours (the correction keeps them frame after frame).
    """
    rs = sampling["projector"]
    x = rng.standard_normal((3, *shape), dtype=np.float32)
    x = yield from denoise("projector", rs, x, rng, start=rs.schedule.steps,
                           steps=options.steps, method=options.method)
    palette = sampling.palette
    if palette is None:
        return x
    if palette.cov is None:  # recorded before the covariance was
        return arrays.match_channels(x, palette.mean, palette.std)
    return arrays.match_covariance(x, palette.mean, palette.cov)


def corrects(sampling: BundleSampling, options: SamplingOptions) -> bool:
    """Whether `correct` changes frames: a correction level is asked for and a Projector exists."""
    return options.correction_steps > 0 and "projector" in sampling.roles


@dataclass(frozen=True)
class StreamAnchor:
    """What the correction holds every frame of a stream to, taken once from its start frame: the
    colours, and where the bundle holds the layout, each pixel's pull (the bundle's
    `layout_weights`) towards the start frame's layout (`arrays.layout`) or, where the bundle has
    a `layout_window`, towards the start frame's and the clip's layouts (N, 3, H, W, the bundle's,
    shared by its streams), matched pixel by pixel."""

    colours: arrays.Colours
    layout: object | None = None
    weights: object | None = None
    clip: object | None = None

    def on_side_of(self, x) -> StreamAnchor:
        """The same anchor next to x (host or device): a stream whose frames live on a device
        copies its host layouts and pulls there once, not with every frame, and the bundle's
        clip layouts once for all its streams."""
        colours = self.colours.on_side_of(x)
        if self.weights is None or arrays.is_host(x) == arrays.is_host(self.weights):
            return self if colours is self.colours else replace(self, colours=colours)
        return StreamAnchor(colours, arrays.like(self.layout, x), arrays.like(self.weights, x),
                            None if self.clip is None else arrays.shared_like(self.clip, x))


def layout_weights(frames: np.ndarray, pull: float, sigma: float, motion: float) -> np.ndarray:
    """Each pixel's layout pull, float32 (H, W), from a clip's uint8 frames (N, H, W, 3): `pull`
    where the clip's layout holds still, falling linearly to none where its standard deviation over
    the clip (the colour channels' mean, on the [-1, 1] scale) reaches `motion` (0: `pull`
    everywhere). What moves in the clip moves freely in a stream; what stands still stays."""
    if motion <= 0:
        return np.full(frames.shape[1:3], pull, np.float32)
    total = squares = 0.0
    for frame in frames:  # a frame at a time: a long clip's layouts are not all held at once
        x = arrays.layout(to_model(frame), sigma)
        total, squares = total + x.astype(np.float64), squares + x.astype(np.float64) ** 2
    mean = total / len(frames)
    spread = np.sqrt(np.maximum(squares / len(frames) - mean**2, 0.0)).mean(axis=0)
    return (pull * np.clip(1.0 - spread / motion, 0.0, 1.0)).astype(np.float32)


def clip_layouts(frames: np.ndarray, sigma: float) -> np.ndarray:
    """The layouts (`arrays.layout`) a stream is held to, float32 (N, 3, H, W), of a clip's uint8
    frames (N, H, W, 3): every frame, or `MAX_HELD_LAYOUTS` of a longer clip, evenly spaced."""
    picks = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), MAX_HELD_LAYOUTS)).round())
    return np.stack([arrays.layout(to_model(frames[int(i)]), sigma) for i in picks])


def stream_anchor(sampling: BundleSampling, options: SamplingOptions, frame) -> StreamAnchor | None:
    """The anchor the correction gives frames taken after `frame`; None (nothing computed) when
    frames are not corrected."""
    if not corrects(sampling, options):
        return None
    colours = arrays.colours_of(frame)
    if sampling.layout_weights is None:
        return StreamAnchor(colours)
    # With the clip's layouts, the start frame's own is one of those held to: a stream's first
    # frames stay nearest it, as the clip's next frame does, where the clip's alone would pull them
    # to another frame's state (an unseen start frame is in no bundle's clip).
    return StreamAnchor(colours, arrays.layout(frame, sampling.layout_sigma),
                        sampling.layout_weights, sampling.clip_layouts)


def _projector_pass(rs: RoleSampling, x, level: int, weight: float, rng: np.random.Generator,
                    margin: int = 0, steps: int = 0, method: str = "ddpm") -> Loop:
    """One correction pass: x noised to `level` (mirrored `margin` px out past its edges), denoised
    by the Projector in `steps` steps, cut back; x moves `weight` of the way to the result."""
    noisy = noise_to_level(arrays.pad_mirrored(x, margin), rs.schedule, level, rng)
    corrected = yield from denoise("projector", rs, noisy, rng, start=level, steps=steps,
                                   method=method)
    corrected = arrays.crop_margin(corrected, margin)
    return corrected if weight == 1.0 else x + weight * (corrected - x)


def correct(sampling: BundleSampling, frame: np.ndarray, rng: np.random.Generator,
            options: SamplingOptions, anchor: StreamAnchor | None = None) -> Loop:
    """Projector correction: noise to T_corr, denoise back (paper appendix D). No-op when off.

    The frame moves by the bundle's `correction_weight` of what the Projector changed: the noise it
    cannot tell from texture costs next-frame PSNR in proportion to the weight squared, while its
    pull back to the clip's patches falls only in proportion (half of it: +1.0 dB on tornado's next
    frame for 10-25% more drift over 300 frames). That is done `correction_passes` times, each on the
    last one's frame: two half corrections cost about half of a whole one and drift less than one
    half (docs/training.md, "Projector correction").
    Before those, a bundle with a coarse correction (`BundleSampling.coarse_level`) moves the frame
    `coarse_correction_weight` of the way to the Projector's one-step estimate of it from that
    level, made with the Predictor's margin of mirrored frame: it pulls larger structures back to
    the clip's, which level 1 cannot reach, without the Projector inventing at the frame's edges
    (docs/training.md, "A coarse correction first").
    Where the `anchor` holds a layout (when the bundle holds one), the frame's own layout then
    moves each pixel's `layout_weights` share of the way to the held one: the frame plus that share
    of the difference of the two blurred frames. The held layout is the stream's start frame's
    (`layout_window` 0): where the clip holds still, each frame relaxes towards the start frame's
    picture while what moves in the clip moves freely, and tornado's cloud stays over its trees
    instead of lifting away, which neither correction reaches (300 frames drift 1.7-1.8 instead of
    3.5; docs/training.md, "Holding the layout"). Or it is the clip's, pixel by pixel
    (`arrays.nearest_layout`): each pixel takes the start frame's or a clip frame's layout,
    whichever looks most like the frame's within `layout_window` px of it. Where the clip holds
    still that is the start frame's picture again; where it moves, the stream is held to a state
    the clip shows there, whichever one it is nearest, so the pull can act on what moves too:
    tornado keeps its funnel for 300 frames, where with the start frame's it lifts into the cloud,
    fish keeps its school, boat_race its smooth wakes (docs/training.md, "Holding to the clip").
    A stream's first frames stay nearest its start frame, as the clip's next frame does, so they
    predict unseen frames as well as with the start frame's hold ("The start frame among the
    pictures").
    The corrected frame then takes the anchor's colours (default: the frame's own): each channel's
    mean and contrast and the frame's saturation (`arrays.keep_colours`), as shown (clamped). Correction
    mends patches, it does not change the exposure: a small bias of the Projector, or the contrast a
    clamp takes from a frame, would otherwise add up over a stream (measured: tornado's brightness
    went from the clip's 0.42 to 0.51 in 300 corrected frames).
    """
    if not corrects(sampling, options):
        return frame
    rs = sampling["projector"]
    colours = arrays.colours_of(frame) if anchor is None else anchor.colours
    x = frame
    coarse = sampling.coarse_level(options)
    if coarse:
        x = yield from _projector_pass(rs, x, coarse, sampling.coarse_correction_weight, rng,
                                       sampling.predictor_margin, steps=1, method="ddim")
    for _ in range(sampling.correction_passes):
        x = yield from _projector_pass(rs, x, options.correction_steps,
                                       sampling.correction_weight, rng)
    if anchor is not None and anchor.weights is not None:
        anchor = anchor.on_side_of(x)
        own = arrays.layout(x, sampling.layout_sigma)
        held = anchor.layout if anchor.clip is None else \
            arrays.nearest_layout(own, anchor.clip, sampling.layout_window, first=anchor.layout)
        x = x + anchor.weights * (held - own)
    return arrays.keep_colours(x, colours)


def predict_frame(sampling: BundleSampling, prev: np.ndarray, k: int, rng: np.random.Generator,
                  options: SamplingOptions, anchor: StreamAnchor | None = None) -> Loop:
    """Frame n+k from frame n: Predictor from noise, conditioned on prev, then Projector correction,
    which holds the frame to `anchor` (default: prev's).

    With a `predictor_margin` M, the Predictor works on prev mirrored M px out past its edges on
    every side, and the frame is cut back out of its output. A network sees zeros past a frame's
    edge and draws what it guesses enters there; frame after frame those guesses move in and add
    up (tornado's sky streaks, ants' shadow growing from the bottom edge). With the margin they are
    made outside the frame and dropped, and what moves in is the frame's own texture, mirrored:
    over 300 frames tornado drifts 40% less and ants 30% less than without a margin. A margin of
    repeated edge pixels, as it was first, moved in as smooth bands (tornado's sky washing in from
    the right); mirrored, tornado drifts a further 9-51% less and ants 3-23% (docs/training.md).
    """
    rs = sampling["predictor"]
    margin = sampling.predictor_margin
    cond = arrays.pad_mirrored(prev, margin)
    x = rng.standard_normal(tuple(cond.shape), dtype=np.float32)
    x = yield from denoise("predictor", rs, x, rng, start=rs.schedule.steps, steps=options.steps,
                           method=options.method, cond=cond, k=float(k))
    x = arrays.crop_margin(x, margin)
    anchor = stream_anchor(sampling, options, prev) if anchor is None else anchor
    return (yield from correct(sampling, x, rng, options, anchor))


def interpolate_frame(sampling: BundleSampling, before: np.ndarray, after: np.ndarray,
                      rng: np.random.Generator, options: SamplingOptions) -> Loop:
    """The frame between two frames: Interpolator conditioned on both, then Projector correction."""
    rs = sampling["interpolator"]
    x = rng.standard_normal(tuple(before.shape), dtype=np.float32)
    cond = arrays.concat([before, after])
    x = yield from denoise("interpolator", rs, x, rng, start=rs.schedule.steps,
                           steps=options.steps, method=options.method, cond=cond)
    return (yield from correct(sampling, x, rng, options))


def extrapolate(sampling: BundleSampling, start: np.ndarray, count: int, k: int,
                rng: np.random.Generator, options: SamplingOptions, first_index: int = 0) -> Loop:
    """`count` frames, each k frames after (k < 0: before) the previous one, starting from `start`,
    numbered from `first_index`.

    The start frame itself is not emitted. Each frame is yielded as soon as it is final. Corrected
    frames keep the start frame's colours (and layout, where the bundle holds it): measured against
    it, a frame's small error (where a clamp takes contrast the rescale cannot give back) stays one
    frame's, instead of adding up over a stream.
    """
    validate_k(k)
    anchor = stream_anchor(sampling, options, start)  # once: every corrected frame's
    prev = start
    for i in range(count):
        prev = yield from predict_frame(sampling, prev, k, rng, options, anchor)
        if anchor is not None:  # kept where the frames are: copied across once
            anchor = anchor.on_side_of(prev)
        yield Frame(first_index + i, prev)
    return prev


# How far Generate re-draws the clip frame a video's new clip starts from: the noise std `project`
# gives it (level 15 of the cpu preset's 50). At 0.3 the variation is hard to see; at 0.6 a
# Projector trained for minutes loses tornado's funnel and most of the ants (docs/server.md,
# "Generate").
GENERATE_STRENGTH = 0.45


def generate_defaults(mode: str) -> str:
    """The loop whose sampling defaults Generate takes in a bundle of `mode` ("video" or "image"):
    a video's new clip is the extrapolation loop from a varied clip frame and samples as Extrapolate
    does; an image's is drawn from noise, which keeps the paper's DDPM (PAPER_DEFAULT_LOOPS)."""
    return "extrapolate" if mode == "video" else "generate"


def vary_frame(sampling: BundleSampling, clip: np.ndarray, rng: np.random.Generator,
               options: SamplingOptions) -> Loop:
    """A variation of one of the clip's uint8 frames (N, H, W, 3), drawn at random: noised to
    GENERATE_STRENGTH and denoised by the Projector (`project`), with that frame's colours.

    The paper starts a new video from "some frame from the original video" or from the Projector's
    draw from noise (section 6.1). A Projector trained for minutes on a CPU draws the clip's textures
    from noise but not its scene (tornado: cloud masses over dark ground, no funnel, no sky), and
    every frame after keeps that; re-drawn from a real frame, the scene stays the clip's while each
    seed starts from another frame and another draw."""
    real = to_model(clip[int(rng.integers(len(clip)))])
    x = yield from run_quietly(project(sampling, real, GENERATE_STRENGTH, rng, options))
    return arrays.keep_colours(x, arrays.colours_of(real))


def generate(sampling: BundleSampling, shape: tuple[int, int], count: int, rng: np.random.Generator,
             options: SamplingOptions, k: int = 1, clip: np.ndarray | None = None) -> Loop:
    """A new clip: the first frame, then the Predictor -> Projector loop (`extrapolate`).

    The first frame is a variation of a frame of `clip` (`vary_frame`; a video bundle's clip, whose
    frames must be `shape`), or without one the Projector's draw from noise (`generate_frame`).
    """
    if count < 1:
        return None
    if clip is not None and tuple(clip.shape[1:3]) != tuple(shape):
        raise ValueError(f"clip frames are {clip.shape[2]}x{clip.shape[1]}, the new clip "
                         f"{shape[1]}x{shape[0]}")
    if clip is None:
        first = yield from generate_frame(sampling, shape, rng, options)
    else:
        first = yield from vary_frame(sampling, clip, rng, options)
    yield Frame(0, first)
    return (yield from extrapolate(sampling, first, count - 1, k, rng, options, first_index=1))


def interpolate_between(sampling: BundleSampling, before: np.ndarray, after: np.ndarray, factor: int,
                        rng: np.random.Generator, options: SamplingOptions,
                        first_index: int = 0) -> Loop:
    """The factor-1 frames between two frames, yielded in temporal order (factor 2, 4 or 8).

    The middle frame comes first from the Interpolator; each half is then filled recursively, so
    x4 = mid, then the quarter points. Frames are yielded in time order regardless.
    """
    validate_factor(factor)
    index = first_index

    def fill(a: np.ndarray, b: np.ndarray, f: int):
        nonlocal index
        if f < 2:
            return
        mid = yield from interpolate_frame(sampling, a, b, rng, options)
        yield from fill(a, mid, f // 2)
        yield Frame(index, mid)
        index += 1
        yield from fill(mid, b, f // 2)

    yield from fill(before, after, factor)
    return None


def upsample(sampling: BundleSampling, frames: Iterable[np.ndarray] | None, factor: int,
             rng: np.random.Generator, options: SamplingOptions) -> Loop:
    """Temporal upsampling of a frame sequence: originals (synthesized=False) with the in-betweens.

    `frames` None: a streamed input. The loop yields NEXT_INPUT whenever it needs the next frame and
    its driver sends it (None: the input ended), so frames may still be arriving while the earlier
    ones are interpolated (the server's Upsample).
    """
    validate_factor(factor)
    source = None if frames is None else iter(frames)
    index = 0
    prev = None
    while True:
        frame = (yield NEXT_INPUT) if source is None else next(source, None)
        if frame is None:
            return None
        if prev is not None:
            yield from interpolate_between(sampling, prev, frame, factor, rng, options, index)
            index += factor - 1
        yield Frame(index, frame, synthesized=False)
        index += 1
        prev = frame


def validate_k(k: int) -> None:
    if k == 0 or abs(k) > 3:
        raise ValueError(f"k must be a nonzero integer in [-3, 3], got {k}")


def validate_factor(factor: int) -> None:
    if factor not in (2, 4, 8):
        raise ValueError(f"factor must be 2, 4 or 8, got {factor}")


# --- driving loops -------------------------------------------------------------------------------
#
# Every driver is built on Stepper (the generator protocol, written once) and the lock-step driver
# below; the server's scheduler drives Steppers with its own choice of which requests share a call.

def run_requests(denoiser: Denoiser, requests: Sequence[StepRequest]) -> list[np.ndarray]:
    """Execute same-key requests as one batched call; returns each request's x_next."""
    first = requests[0]
    if any(r.batch_key != first.batch_key for r in requests):
        raise ValueError("requests of one batch must share role and shape")
    cond = None if first.cond is None else arrays.stack([r.cond for r in requests])
    out = denoiser(
        first.role,
        arrays.stack([r.x for r in requests]),
        cond,
        np.array([r.t for r in requests], np.float32),
        np.array([r.k for r in requests], np.float32),
        np.stack([r.coef for r in requests]),
        arrays.stack([r.noise for r in requests]),
    )
    return arrays.rows(out)


class Stepper:
    """One loop being driven: `advance` sends a step's output (or the input frame it asked for) in
    and runs the loop to its next StepRequest (`pending`), its next NextInput (`needs_input`) or its
    end (`finished`, with its return value in `value`), returning the frames it finished on the way.

    `host_frames`: hand frames (and the value) out as numpy arrays even when a device runtime made
    them; the server turns that off and converts frames to uint8 on the device instead."""

    def __init__(self, loop: Loop, host_frames: bool = True) -> None:
        self.loop = loop
        self.host_frames = host_frames
        self.pending: StepRequest | None = None
        self.needs_input = False
        self.finished = False
        self.value = None

    def advance(self, reply: np.ndarray | None = None) -> list[Frame]:
        frames = []
        self.pending, self.needs_input = None, False
        while True:
            try:
                event = self.loop.send(reply)
            except StopIteration as stop:
                value = stop.value
                if self.host_frames and value is not None and not arrays.is_host(value):
                    value = arrays.to_host(value)
                self.pending, self.finished, self.value = None, True, value
                return frames
            if isinstance(event, StepRequest):
                self.pending = event
                return frames
            if isinstance(event, NextInput):
                self.needs_input = True
                return frames
            if not isinstance(event, Frame):
                raise TypeError(f"sampling loop yielded {type(event).__name__}")
            if self.host_frames and not arrays.is_host(event.image):
                event = Frame(event.index, arrays.to_host(event.image), event.synthesized)
            frames.append(event)
            reply = None  # a frame needs no engine call: go on at once


def lockstep(loops: Sequence[Loop], denoiser: Denoiser
             ) -> Generator[tuple[int, Frame], None, list]:
    """Drive loops in lock-step: each round, one batched engine call per batch key.

    Yields (loop index, frame) as frames become final and returns each loop's return value, in
    order. Each loop owns its random Generator, so its frames are the same as when it runs alone.
    """
    steppers = [Stepper(loop) for loop in loops]
    for i, stepper in enumerate(steppers):
        for frame in stepper.advance():
            yield i, frame
    while True:
        groups: dict[tuple, list[int]] = {}
        for i, stepper in enumerate(steppers):
            if stepper.needs_input:
                raise ValueError("a streamed-input loop needs a driver that feeds it (give upsample "
                                 "its frames to run it here)")
            if stepper.pending is not None:
                groups.setdefault(stepper.pending.batch_key, []).append(i)
        if not groups:
            return [stepper.value for stepper in steppers]
        for group in groups.values():
            outs = run_requests(denoiser, [steppers[i].pending for i in group])
            for i, out in zip(group, outs):
                for frame in steppers[i].advance(out):
                    yield i, frame


def run(loop: Loop, denoiser: Denoiser) -> Iterator[Frame]:
    """Drive one loop to the end with batch-1 engine calls, yielding its frames as they finish."""
    for _, frame in lockstep([loop], denoiser):
        yield frame


def run_lockstep(loops: Sequence[Loop], denoiser: Denoiser,
                 on_frame: Callable[[int, Frame], None] | None = None) -> list:
    """`lockstep` to the end: frames go to `on_frame(index, frame)`; returns the loops' values."""
    driver = lockstep(loops, denoiser)
    while True:
        try:
            i, frame = next(driver)
        except StopIteration as stop:
            return stop.value
        if on_frame is not None:
            on_frame(i, frame)


def run_to_value(loop: Loop, denoiser: Denoiser):
    """Drive one loop to the end and return its value (its frames, if any, are dropped)."""
    return run_lockstep([loop], denoiser)[0]


# --- projection: the image applications of paper section 6.2 ---------------------------------------
#
# Editing, generation from a sketch and visual summary are one mechanism: noise the user's image to a
# level t, then denoise it with the Projector, which pulls its patches onto the training image's patch
# distribution. The steps are `denoise`'s; nothing below computes a step.

DEFAULT_STRENGTH = 0.6  # noise std of a projection when the user names none (see strength_level)
SUMMARY_AXES = ("both", "width", "height")
MIN_SIDE = 8  # px: the smallest side a summary may shrink an image to


def strength_level(schedule: Schedule, strength: float) -> int:
    """Noise level t for a strength S in [0, 1]: the first level whose noise std reaches S.

    S is the standard deviation of the noise the image is given, sqrt(1 - abar_t), on the [-1, 1]
    pixel scale; the image keeps the weight sqrt(1 - S^2). Naming the noise rather than a fraction of
    T keeps S meaning the same on the video (cosine) and single-image (linear) schedules. S = 0 is
    t = 0 (the input unchanged); S = 1 is t = T (pure noise, the input forgotten).
    """
    if not 0.0 <= strength <= 1.0:  # also refuses NaN
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    stds = np.sqrt(1.0 - schedule.alpha_bars)
    return min(int(np.searchsorted(stds, strength, side="left")), schedule.steps)


def projection_levels(schedule: Schedule, strength: float, steps: int = 0) -> list[int]:
    """The noise levels a projection's image passes through, from t(strength) down to 0.

    With intermediates, `project` yields one frame per entry (the last is the result); without, one.
    """
    t = strength_level(schedule, strength)
    return [0] if t == 0 else timesteps(t, steps)


def _observe_steps(loop: Loop, first_index: int) -> Loop:
    """The same loop, also yielding a Frame of every step's output (its noisy state) as it arrives."""
    index, reply = first_index, None
    while True:
        try:
            event = loop.send(reply)
        except StopIteration as stop:
            return stop.value
        reply = yield event
        if isinstance(event, StepRequest):
            yield Frame(index, reply)
            index += 1


def project(sampling: BundleSampling, image: np.ndarray, strength: float, rng: np.random.Generator,
            options: SamplingOptions, *, intermediates: bool = False, first_index: int = 0) -> Loop:
    """Noise `image` to level t(strength) and denoise it to 0 with the Projector (paper 6.2).

    Yields the result as Frame(first_index); with `intermediates`, first the noised image and the
    state after every step (projection_levels says their levels), the result last. Strength 0
    returns the image itself (synthesized=False) and draws nothing. `options.steps` caps the
    denoising steps (0 = every level from t); correction does not apply, this is the correction.
    """
    rs = sampling["projector"]
    t = strength_level(rs.schedule, strength)
    if t == 0:
        yield Frame(first_index, image, synthesized=False)
        return image
    x = noise_to_level(image, rs.schedule, t, rng)
    loop = denoise("projector", rs, x, rng, start=t, steps=options.steps, method=options.method)
    if intermediates:
        yield Frame(first_index, x)
        x = yield from _observe_steps(loop, first_index + 1)  # its last frame is the result
    else:
        x = yield from loop
        yield Frame(first_index, x)
    return x


def summary_sizes(size: tuple[int, int], scales: Sequence[float], axes: str = "both"
                  ) -> list[tuple[int, int]]:
    """(height, width) of each summary step: `size` times each scale on the chosen axes, rounded."""
    if axes not in SUMMARY_AXES:
        raise ValueError(f"axes must be one of {', '.join(SUMMARY_AXES)}, got {axes!r}")
    if not scales:
        raise ValueError("scales must name at least one scale")
    h, w = size
    out = []
    for i, s in enumerate(scales):
        if not 0.0 < s <= 1.0:  # also refuses NaN
            raise ValueError(f"scales[{i}] must be in (0, 1], got {s}")
        sh = int(h * s + 0.5) if axes in ("both", "height") else h
        sw = int(w * s + 0.5) if axes in ("both", "width") else w
        if min(sh, sw) < MIN_SIDE:
            raise ValueError(f"scales[{i}] = {s:g} makes {sw}x{sh} of {w}x{h}; each side must be at "
                             f"least {MIN_SIDE} px")
        out.append((sh, sw))
    return out


def resize_image(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A model-layout image (3, H, W) float32 resized to (height, width): Lanczos, in float (no
    rounding to 8 bits between summary steps)."""
    x = arrays.to_host(x)  # PIL resizes on the host
    if x.shape[1:] == tuple(size):
        return x
    from PIL import Image

    h, w = size
    channels = [np.asarray(Image.fromarray(c).resize((w, h), Image.Resampling.LANCZOS))
                for c in np.ascontiguousarray(x, dtype=np.float32)]
    return np.clip(np.stack(channels), -1.0, 1.0).astype(np.float32)  # Lanczos overshoots edges


def summarize(sampling: BundleSampling, image: np.ndarray, scales: Sequence[float], strength: float,
              rng: np.random.Generator, options: SamplingOptions, axes: str = "both") -> Loop:
    """Visual summary (paper 6.2): shrink step by step; project each step's image at its new size.

    Step i resizes step i-1's result (the input for i = 0) to `image`'s size times scales[i] and
    projects it, so the model puts its patches back at their own resolution as the image shrinks.
    Yields one Frame per scale, at that scale's size (synthesized=False at strength 0: resized only).
    """
    sizes = summary_sizes(image.shape[1:], scales, axes)
    made = strength_level(sampling["projector"].schedule, strength) > 0
    x = image
    for i, size in enumerate(sizes):
        small = resize_image(x, size)
        x = yield from run_quietly(project(sampling, small, strength, rng, options))
        yield Frame(i, x, synthesized=made)
    return x


def run_quietly(loop: Loop) -> Loop:
    """A loop's steps without its frames: for loops used as one part of a larger one."""
    reply = None
    while True:
        try:
            event = loop.send(reply)
        except StopIteration as stop:
            return stop.value
        reply = (yield event) if isinstance(event, StepRequest) else None
