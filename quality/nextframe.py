"""Next-frame prediction on unseen frames (paper section 7, appendix A.3), against "copy the frame".

The experiment: subsample a clip by the speed S (frames p, p+S, p+2S, ... with the phase p = start mod
S), train on n consecutive frames of that subsampled clip, then for every subsampled frame i such that
neither i nor i+k is a training frame, predict frame i+k from frame i (k in subsampled frames, as the
Predictor was trained) and compare with the truth. The baseline "predicts" frame i itself.

Scores are on [0, 1] pixels at the model's resolution: MSE per pair, its mean over the pairs, and PSNR
= 10 log10(1 / MSE). Each pair draws from its own Generator seeded by (seed, pair index), so a result
does not depend on how many pairs are batched together.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from sinfusion import nextframe
from sinfusion.nextframe import mse_to_psnr  # noqa: F401  (part of this module's API)
from sinfusion.sampling import BundleSampling, Denoiser, SamplingOptions, validate_k


@dataclass(frozen=True)
class Split:
    """Which frames of the original clip train the model and which pairs test it."""

    speed: int
    k: int
    train: list[int]  # original-clip indices of the n training frames
    pairs: list[tuple[int, int]]  # (i, target) original-clip indices, both unseen in training
    # Pairs inside the training slice: a diagnostic (fit vs generalisation), not the benchmark.
    seen: list[tuple[int, int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"speed": self.speed, "k": self.k, "train": self.train,
                "pairs": [list(p) for p in self.pairs], "seen": [list(p) for p in self.seen]}

    def seen_split(self) -> Split:
        """The same split with the seen pairs as its test pairs."""
        return replace(self, pairs=list(self.seen), seen=[])


def make_split(num_frames: int, n: int, speed: int = 1, k: int = 1, start: int = 0,
               max_pairs: int = 100) -> Split:
    """The training frames and the unseen test pairs of a clip of `num_frames` frames."""
    validate_k(k)
    if k < 0:
        raise ValueError(f"k must be positive for next-frame prediction, got {k}")
    if speed < 1:
        raise ValueError(f"speed must be >= 1, got {speed}")
    if n < 2:
        raise ValueError(f"n (training frames) must be >= 2, got {n}")
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    if not 0 <= start < num_frames:
        raise ValueError(f"start must be in [0, {num_frames - 1}], got {start}")
    sub = list(range(start % speed, num_frames, speed))  # the subsampled clip, same phase as start
    first = sub.index(start)
    if first + n > len(sub):
        raise ValueError(f"n={n} frames from frame {start} at speed {speed} need "
                         f"{start + (n - 1) * speed + 1} frames; the clip has {num_frames}")
    seen = set(range(first, first + n))
    test = [i for i in range(len(sub) - k) if i not in seen and i + k not in seen]
    if not test:
        raise ValueError(f"no unseen frame pairs left: the clip has {num_frames} frames, training "
                         f"uses n={n} at speed {speed} from frame {start}, k={k}")
    if len(test) > max_pairs:  # evenly spaced, always including both ends
        test = [test[j] for j in np.linspace(0, len(test) - 1, max_pairs).round().astype(int)]
    inside = [i for i in sorted(seen) if i + k in seen]
    return Split(speed, k, [sub[i] for i in sorted(seen)], [(sub[i], sub[i + k]) for i in test],
                 [(sub[i], sub[i + k]) for i in inside])


def predict_pairs(denoiser: Denoiser, sampling: BundleSampling, frames: np.ndarray, split: Split,
                  options: SamplingOptions, seed: int = 0, batch: int = 16) -> np.ndarray:
    """The model's prediction of each test pair's target: float32 (P, 3, H, W) in [-1, 1]."""
    return nextframe.predict_pairs(denoiser, sampling, frames, split.pairs, split.k, options, seed,
                                   batch)


def score_pairs(frames: np.ndarray, split: Split, predictions: np.ndarray) -> dict:
    """Per-pair and mean MSE / PSNR of the predictions and of the copy baseline."""
    return nextframe.score_pairs(frames, split.pairs, predictions)


def evaluate(denoiser: Denoiser, sampling: BundleSampling, frames: np.ndarray, split: Split,
             options: SamplingOptions, seed: int = 0, sheet: str | Path | None = None,
             sheet_pairs: int = 6) -> dict:
    """Predict every test pair and score it against the truth and the copy baseline.

    sheet: also write a contact sheet of the first `sheet_pairs` pairs (evenly spaced), one column
    per pair; rows: the current frame (= the copy baseline), the true next frame, the prediction.
    """
    started = time.monotonic()
    predictions = predict_pairs(denoiser, sampling, frames, split, options, seed)
    result = score_pairs(frames, split, predictions)
    result.update(split=split.to_dict(), sampling=asdict(options), seed=seed,
                  sampling_seconds=round(time.monotonic() - started, 2))
    if sheet is not None:
        from sinfusion.frames import to_uint8
        from sinfusion.video import contact_sheet, write_image

        count = min(sheet_pairs, len(split.pairs))
        chosen = np.linspace(0, len(split.pairs) - 1, count).round().astype(int)
        rows = [frames[[split.pairs[c][0] for c in chosen]],
                frames[[split.pairs[c][1] for c in chosen]],
                to_uint8(predictions[chosen])]
        write_image(sheet, contact_sheet(np.concatenate(rows), columns=count))
    return result


def train_split(frames: np.ndarray, split: Split, out_dir: str | Path, config,
                roles: Sequence[str] = ("predictor",), progress: bool = False):
    """Train (or finish training) a bundle on the split's training frames only; returns the bundle.

    A bundle already in out_dir is resumed, so re-running an experiment reuses its model; the trainer
    refuses it if it was trained on other frames.
    """
    from sinfusion.trainer.training import train_bundle

    out = Path(out_dir)
    resume = (out / "manifest.json").is_file()
    return train_bundle(np.ascontiguousarray(frames[split.train]), out, config, roles=list(roles),
                        resume=resume, progress=progress)
