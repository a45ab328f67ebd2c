"""Next-frame prediction scored against "copy the current frame": the core of every quality figure.

Used by the trainer (its held-out report while it trains) and by `sinfusion-quality nextframe`. For
pairs (i, j) of clip frames, the model predicts frame j from frame i with the core's `predict_frame`
(Predictor, then Projector correction when the bundle has one and the options ask for it); the copy
baseline "predicts" frame i itself. Scores are on [0, 1] pixels at the model's resolution: MSE per
pair, the mean over pairs, PSNR = 10 log10(1 / mean MSE), and the pairs the model wins. Each pair
draws from its own Generator seeded by (seed, pair index), so a score does not depend on batching.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .frames import to_model
from .sampling import BundleSampling, Denoiser, SamplingOptions, predict_frame, run_lockstep

Pair = tuple[int, int]


def mse_to_psnr(mse: float) -> float:
    return float("inf") if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def _unit(x: np.ndarray) -> np.ndarray:
    """Model frames in [-1, 1] -> [0, 1] float64, clipped as a displayed frame would be."""
    return np.clip((np.asarray(x, np.float64) + 1.0) / 2.0, 0.0, 1.0)


def predict_pairs(denoiser: Denoiser, sampling: BundleSampling, frames: np.ndarray, pairs: Sequence[Pair],
                  k: int, options: SamplingOptions, seed: int = 0,
                  batch: int = 16) -> np.ndarray:
    """The model's prediction of each pair's second frame: float32 (P, 3, H, W) in [-1, 1]."""
    x = to_model(frames)
    out = []
    for s in range(0, len(pairs), batch):
        loops = [predict_frame(sampling, x[i], k, np.random.default_rng([seed, s + j]), options)
                 for j, (i, _) in enumerate(pairs[s:s + batch])]
        out.extend(run_lockstep(loops, denoiser))
    return np.stack(out)


def score_pairs(frames: np.ndarray, pairs: Sequence[Pair], predictions: np.ndarray) -> dict:
    """Per-pair and mean MSE / PSNR of the predictions and of the copy baseline."""
    truth = frames.astype(np.float64) / 255.0
    rows = []
    for (i, j), pred in zip(pairs, predictions):
        target = truth[j]
        model = float(np.mean((_unit(pred).transpose(1, 2, 0) - target) ** 2))
        copy = float(np.mean((truth[i] - target) ** 2))
        rows.append({"frame": i, "target": j, "model_mse": model, "copy_mse": copy,
                     "model_psnr": mse_to_psnr(model), "copy_psnr": mse_to_psnr(copy)})
    model_mse = float(np.mean([r["model_mse"] for r in rows]))
    copy_mse = float(np.mean([r["copy_mse"] for r in rows]))
    return {
        "model_mse": model_mse,
        "copy_mse": copy_mse,
        "model_psnr": mse_to_psnr(model_mse),
        "copy_psnr": mse_to_psnr(copy_mse),
        "model_wins": int(sum(r["model_mse"] < r["copy_mse"] for r in rows)),
        "pairs": rows,
    }


def summary_line(record: dict) -> str:
    """A bundle's manifest "quality" record (the trainer's held-out score) as one line.

    'next frame on 15 held-out pairs: model 30.12 dB vs copy 29.50 dB (+0.62, 12/15 won): beats copy'
    """
    if not record:
        return "next frame: not measured (no held-out frames)"
    return (f"next frame on {record['pairs']} held-out pairs: model {record['model_psnr']:.2f} dB vs "
            f"copy {record['copy_psnr']:.2f} dB ({record['gain_db']:+.2f}, {record['pairs_won']}/"
            f"{record['pairs']} won): {record['verdict']}")
