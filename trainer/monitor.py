"""The trainer measures what it trains: next-frame prediction on held-out frames against "copy".

Held-out split (video mode): the last H frames of the clip are kept out of every role's training
(H = `holdout`, or automatically about 1/6 of the clip, 3 to 16 frames; clips under 12 frames hold
out nothing). The Predictor is scored on the consecutive pairs inside that tail, frames the model has
never seen and at the far end of the clip from most of what it trained on: it has to have learned the
motion, not the frames. The tail stays in the bundle's frames, so clients can still start from it.

Every `eval_every_s` seconds of Predictor training the EMA Predictor predicts every held-out pair with
the sampler the server uses by default (with Projector correction when the Projector is trained: the
trainer trains it first) and the score is compared with copying the current frame
(sinfusion.nextframe). The progress bar and the log show it; the bundle's manifest records the last
score under "quality":

    {"holdout_frames": [first, end), "pairs": P, "k": 1, "sampling": {...},
     "model_psnr": dB, "copy_psnr": dB, "gain_db": model - copy, "pairs_won": W,
     "predictor_steps": S, "predictor_seconds": s, "verdict": "beats copy" | "ties copy" | ...,
     "trained_steps": S_end, "measurements": M}

Early stopping: the weights served are those of the best measurement, not the last, when the last
scored worse (small networks trained long on few frames start to memorise them; measured on the ants
clip in docs/training.md). The record then names the step they come from (predictor_steps) and how
long training went on (trained_steps); the score is of the weights served, chosen on these same pairs,
so it is slightly optimistic.

The Interpolator is watched the same way (`InBetweenMonitor`): on the triplets (i, i+1, i+2) inside
the tail it rebuilds frame i+1 from its neighbours with the server's default upsampling sampler, scored
against their 50/50 blend; the best weights are served (an anchored Interpolator starts at the blend,
so a clip whose tail it cannot learn keeps the blend) and the manifest records the score under
"quality"."upsampling" ({"triplets", "model_psnr", "blend_psnr", "gain_db", "triplets_won",
"interpolator_steps", "interpolator_seconds", "verdict", ...}). It does not stop early.

Stop rule: the Predictor stops early once it beats copy by `stop_margin_db` and its best score has not
improved by `min_gain_db` over the last `patience` measurements (the plateau guard: it never stops a
model that is still getting better). The wall-clock budget (`--time`) stops it in any case.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from sinfusion import nextframe
from sinfusion.io.cli import counted
from sinfusion.nextframe import holdout_pairs, holdout_triplets, summary_line  # noqa: F401  (re-exported)
from sinfusion.sampling import (BundleSampling, RoleSampling, SamplingOptions, clip_layouts,
                                options_record)

MIN_FRAMES_FOR_HOLDOUT = 12


def seen_layouts(served: BundleSampling, frames: np.ndarray, holdout: tuple[int, int]):
    """The clip layouts a stream held to the clip is pulled to, of the clip's uint8 frames outside
    the held-out ones [first, end): held to the held-out frames themselves, a prediction would be
    pulled to the very frame it is scored against (tornado +1.94 dB over copy instead of +1.28 on
    one bundle). None where the bundle holds no clip layouts."""
    if served.clip_layouts is None:
        return None
    first, end = holdout
    return clip_layouts(np.concatenate([frames[:first], frames[end:]]), served.layout_sigma)


def holdout_count(frame_count: int, requested: int = -1) -> int:
    """Frames held out at the end of a clip: `requested`, or automatic (-1); 0 when too short."""
    if requested >= 0:
        if requested and frame_count - requested < 4:
            raise ValueError(f"holdout {requested} leaves {frame_count - requested} frames to train "
                             f"on; need at least 4 (the clip has {frame_count})")
        if requested == 1:
            raise ValueError("holdout must be 0 (off) or at least 2 frames (one pair)")
        return requested
    if frame_count < MIN_FRAMES_FOR_HOLDOUT:
        return 0
    return int(min(16, max(3, round(frame_count / 6))))


@dataclass
class Measurement:
    step: int
    seconds: float
    model_psnr: float
    copy_psnr: float  # the baseline's: copy for next frames, the blend for in-between frames
    pairs_won: int
    pairs: int  # pairs (or triplets) scored

    @property
    def gain_db(self) -> float:
        return self.model_psnr - self.copy_psnr


@dataclass
class NextFrameMonitor:
    """Scores the Predictor on held-out pairs now and then, and decides when to stop early."""

    role = "predictor"
    label = "vs_copy"  # the progress bar's field

    frames: np.ndarray  # the whole clip, uint8 (N, H, W, 3)
    pairs: list[tuple[int, int]]
    k: int = 1
    options: SamplingOptions = field(default_factory=SamplingOptions)
    eval_every_s: float = 60.0
    stop_margin_db: float = 0.5  # 0 disables the early stop
    min_gain_db: float = 0.05
    patience: int = 3
    seed: int = 0
    holdout: tuple[int, int] = (0, 0)  # [first, end) of the held-out frames, for the record
    keep_best: bool = True  # serve the best-scoring EMA weights, not the last ones
    history: list[Measurement] = field(default_factory=list)
    served: Measurement | None = None  # the measurement of the weights that end up served
    _last_eval: float = field(default=-1.0, repr=False)
    _projector: object = field(default=None, repr=False)
    facts: BundleSampling = field(default_factory=BundleSampling)  # the served sampler's, when scored
    _best_state: dict | None = field(default=None, repr=False)

    def due(self, elapsed_s: float) -> bool:
        return self._last_eval < 0 or elapsed_s - self._last_eval >= self.eval_every_s

    def measure(self, run, bundle) -> str:
        """Score the run's EMA Predictor and remember its weights if they are the best; short text."""
        m = self.score(run, bundle)
        if self.keep_best and (self.served is None or m.model_psnr > self.served.model_psnr):
            self.served = m
            self._best_state = {k: v.detach().clone() for k, v in run.ema.state_dict().items()}
        return short_text(m)

    def score(self, run, bundle) -> Measurement:
        """Score the run's EMA network (with the bundle's Projector, when trained)."""
        from sinfusion.runtimes.torch_runtime import TorchDenoiser, load_network

        served = bundle.sampling()  # the bundle's facts: its correction weight and passes
        roles = {self.role: RoleSampling(run.schedule, run.target)}
        networks = {self.role: run.ema}
        if "projector" in bundle.manifest.roles and self.options.correction_steps > 0:
            if self._projector is None:
                self._projector = load_network(bundle, "projector").to(run.device)
            roles["projector"] = served["projector"]
            networks["projector"] = self._projector
        denoiser = TorchDenoiser.from_networks(networks, device=str(run.device))
        # with the run's network in its role, held to the trained frames' layouts only
        self.facts = replace(served, roles=roles, clip_layouts=self.seen_layouts(served))
        return self.measure_with(denoiser, self.facts, run.state.step, run.state.elapsed_s)

    def seen_layouts(self, served: BundleSampling):
        """`seen_layouts` of this monitor's clip and held-out frames."""
        return seen_layouts(served, self.frames, self.holdout)

    def sampling_record(self) -> dict:
        return options_record(self.options, self.facts)

    def finish(self, run, bundle) -> None:
        """Measure the final weights (unless just measured), put back the best ones if they scored
        better by more than min_gain_db (early stopping: a small network trained long on few frames
        starts to memorise them), and record the served weights' score in the manifest."""
        if not self.history or self.history[-1].step != run.state.step:
            self.measure(run, bundle)
        last = self.history[-1]
        if (self.keep_best and self.served is not None and self._best_state is not None
                and self.served.model_psnr > last.model_psnr + self.min_gain_db):
            run.ema.load_state_dict(self._best_state)
        else:
            self.served = last
        self.write_record(bundle)

    def write_record(self, bundle) -> None:
        """The Predictor's figures are the record's top level; the Interpolator's entry is kept."""
        previous = bundle.manifest.quality
        kept = {"upsampling": previous["upsampling"]} if "upsampling" in previous else {}
        bundle.manifest.quality = {**self.record(), **kept}

    def latest_text(self) -> str:
        m = self.served or (self.history[-1] if self.history else None)
        return short_text(m) if m else ""

    def measure_with(self, denoiser, sampling: BundleSampling, step: int,
                     elapsed_s: float) -> Measurement:
        """Predict and score every pair with the given runtime; appends to the history."""
        model_psnr, base_psnr, won = self._predict_and_score(denoiser, sampling)
        m = Measurement(step, round(elapsed_s, 1), round(model_psnr, 3), round(base_psnr, 3), won,
                        len(self.pairs))
        self.history.append(m)
        self._last_eval = elapsed_s
        return m

    def _predict_and_score(self, denoiser, sampling: BundleSampling) -> tuple[float, float, int]:
        predictions = nextframe.predict_pairs(denoiser, sampling, self.frames, self.pairs, self.k,
                                              self.options, self.seed)
        score = nextframe.score_pairs(self.frames, self.pairs, predictions)
        return score["model_psnr"], score["copy_psnr"], score["model_wins"]

    def should_stop(self) -> bool:
        """Beats copy by the margin and has stopped improving (see the module docstring)."""
        if self.stop_margin_db <= 0 or len(self.history) <= self.patience:
            return False
        latest = self.history[-1]
        if latest.gain_db < self.stop_margin_db:
            return False
        best_before = max(m.model_psnr for m in self.history[:-self.patience])
        best_recent = max(m.model_psnr for m in self.history[-self.patience:])
        return best_recent < best_before + self.min_gain_db

    def record(self) -> dict:
        """The manifest's "quality" entry for the latest measurement ({} when none was made)."""
        if not self.history:
            return {}
        m = self.served or self.history[-1]
        return {
            "holdout_frames": list(self.holdout), "pairs": m.pairs, "k": self.k,
            "sampling": self.sampling_record(), "model_psnr": m.model_psnr,
            "copy_psnr": m.copy_psnr, "gain_db": round(m.gain_db, 3), "pairs_won": m.pairs_won,
            "predictor_steps": m.step, "predictor_seconds": m.seconds, "verdict": verdict(m),
            "trained_steps": self.history[-1].step, "measurements": len(self.history),
        }


@dataclass
class InBetweenMonitor(NextFrameMonitor):
    """Scores the Interpolator on held-out triplets against the blend and keeps its best weights.

    `pairs` holds (i, i+2) for each triplet; it never stops early (stop_margin_db 0)."""

    role = "interpolator"
    label = "vs_blend"
    stop_margin_db: float = 0.0

    def _predict_and_score(self, denoiser, sampling: BundleSampling) -> tuple[float, float, int]:
        firsts = [i for i, _ in self.pairs]
        predictions = nextframe.predict_middles(denoiser, sampling, self.frames, firsts, self.options,
                                                self.seed)
        score = nextframe.score_middles(self.frames, firsts, predictions)
        return score["model_psnr"], score["blend_psnr"], score["model_wins"]

    def write_record(self, bundle) -> None:
        bundle.manifest.quality = {**bundle.manifest.quality, "upsampling": self.record()}

    def record(self) -> dict:
        if not self.history:
            return {}
        m = self.served or self.history[-1]
        return {
            "triplets": m.pairs, "sampling": self.sampling_record(), "model_psnr": m.model_psnr,
            "blend_psnr": m.copy_psnr, "gain_db": round(m.gain_db, 3), "triplets_won": m.pairs_won,
            "interpolator_steps": m.step, "interpolator_seconds": m.seconds,
            "verdict": verdict(m, "blend"),
            "trained_steps": self.history[-1].step, "measurements": len(self.history),
        }


def upsampling_line(record: dict) -> str:
    """The manifest's "quality"."upsampling" record as one line."""
    return (f"in-between frames on {counted(record['triplets'], 'held-out triplet')}: model "
            f"{record['model_psnr']:.2f} dB vs blend {record['blend_psnr']:.2f} dB "
            f"({record['gain_db']:+.2f}, {record['triplets_won']}/{record['triplets']} won): "
            f"{record['verdict']}")


def short_text(m: Measurement) -> str:
    return f"{m.gain_db:+.2f}dB {m.pairs_won}/{m.pairs}"


def verdict(m: Measurement, baseline: str = "copy") -> str:
    """One word on the model against its baseline (copying the frame, or the blend for in-between
    frames): what a user needs to decide."""
    if m.gain_db >= 0.5 and 2 * m.pairs_won > m.pairs:
        return f"beats {baseline}"
    if m.gain_db > -0.5:
        return f"ties {baseline}"
    return f"loses to {baseline}"
