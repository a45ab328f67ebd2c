"""Next-frame prediction scored against "copy the current frame": the core of every quality figure.

Used by the trainer (its held-out report while it trains) and by `sinfusion-quality nextframe`. For
pairs (i, j) of clip frames, the model predicts frame j from frame i with the core's `predict_frame`
(Predictor, then Projector correction when the bundle has one and the options ask for it); the copy
baseline "predicts" frame i itself. Scores are on [0, 1] pixels at the model's resolution: MSE per
pair, the mean over pairs, PSNR = 10 log10(1 / mean MSE), and the pairs the model wins. Each pair
draws from its own Generator seeded by (seed, pair index), so a score does not depend on batching.
In-between frames (upsampling) are scored the same way against the 50/50 blend of their neighbours
(`predict_middles`, `score_middles`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .frames import to_model
from .io.cli import counted
from .sampling import (BundleSampling, Denoiser, SamplingOptions, interpolate_frame, predict_frame,
                       run_lockstep)

Pair = tuple[int, int]


def mse_to_psnr(mse: float) -> float:
    return float("inf") if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def _unit(x: np.ndarray) -> np.ndarray:
    """Model frames in [-1, 1] -> [0, 1] float64, clipped as a displayed frame would be."""
    return np.clip((np.asarray(x, np.float64) + 1.0) / 2.0, 0.0, 1.0)


def holdout_pairs(frame_count: int, holdout: int, k: int = 1) -> list[tuple[int, int]]:
    """The (i, i+k) pairs inside the held-out tail."""
    first = frame_count - holdout
    return [(i, i + k) for i in range(first, frame_count - k)] if holdout else []


def holdout_triplets(frame_count: int, holdout: int) -> list[int]:
    """First frames i of the triplets (i, i+1, i+2) inside the held-out tail."""
    return list(range(frame_count - holdout, frame_count - 2)) if holdout else []


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


def predict_middles(denoiser: Denoiser, sampling: BundleSampling, frames: np.ndarray,
                    firsts: Sequence[int], options: SamplingOptions, seed: int = 0,
                    batch: int = 16) -> np.ndarray:
    """The Interpolator's frame i+1 from frames i and i+2, for each i in `firsts`: float32
    (P, 3, H, W) in [-1, 1]. Seeded per triplet, like predict_pairs."""
    x = to_model(frames)
    out = []
    for s in range(0, len(firsts), batch):
        loops = [interpolate_frame(sampling, x[i], x[i + 2], np.random.default_rng([seed, s + j]), options)
                 for j, i in enumerate(firsts[s:s + batch])]
        out.extend(run_lockstep(loops, denoiser))
    return np.stack(out)


def score_middles(frames: np.ndarray, firsts: Sequence[int], predictions: np.ndarray) -> dict:
    """Mean MSE / PSNR and wins of predicted middles and of the 50/50 blend of their neighbours."""
    truth = frames.astype(np.float64) / 255.0
    blends = (truth[list(firsts)] + truth[[i + 2 for i in firsts]]) / 2.0
    means, per_triplet = compare(truth[[i + 1 for i in firsts]],
                                 _unit(predictions).transpose(0, 2, 3, 1), blends, "blend")
    return {**means, "triplets": [{"frame": i + 1, "model_mse": model, "blend_mse": blend}
                                  for i, (model, blend) in zip(firsts, per_triplet)]}


def compare(truths: np.ndarray, predictions: np.ndarray, baselines: np.ndarray,
            baseline: str) -> tuple[dict, list[tuple[float, float]]]:
    """Predictions and a baseline's frames scored against the true frames, all (P, H, W, 3) on [0, 1]:
    ({"model_mse", f"{baseline}_mse", "model_psnr", f"{baseline}_psnr", "model_wins"}, per item
    (model MSE, baseline MSE)). Next-frame prediction compares with copy, upsampling with the blend."""
    per_item = [(float(np.mean((p - t) ** 2)), float(np.mean((b - t) ** 2)))
                for t, p, b in zip(truths, predictions, baselines)]
    model_mse = float(np.mean([m for m, _ in per_item]))
    base_mse = float(np.mean([b for _, b in per_item]))
    means = {"model_mse": model_mse, f"{baseline}_mse": base_mse, "model_psnr": mse_to_psnr(model_mse),
             f"{baseline}_psnr": mse_to_psnr(base_mse),
             "model_wins": int(sum(m < b for m, b in per_item))}
    return means, per_item


def score_pairs(frames: np.ndarray, pairs: Sequence[Pair], predictions: np.ndarray) -> dict:
    """Per-pair and mean MSE / PSNR of the predictions and of the copy baseline."""
    truth = frames.astype(np.float64) / 255.0
    means, per_pair = compare(truth[[j for _, j in pairs]], _unit(predictions).transpose(0, 2, 3, 1),
                              truth[[i for i, _ in pairs]], "copy")
    rows = [{"frame": i, "target": j, "model_mse": model, "copy_mse": copy,
             "model_psnr": mse_to_psnr(model), "copy_psnr": mse_to_psnr(copy)}
            for (i, j), (model, copy) in zip(pairs, per_pair)]
    return {**means, "pairs": rows}


def summary_line(record: dict) -> str:
    """A bundle's manifest "quality" record (the trainer's held-out score) as one line.

    'next frame on 15 held-out pairs: model 30.12 dB vs copy 29.50 dB (+0.62, 12/15 won): beats copy'
    """
    if "pairs" not in record:  # nothing held out (or only the Interpolator was trained)
        return "next frame: not measured (no held-out frames)"
    return (f"next frame on {counted(record['pairs'], 'held-out pair')}: model "
            f"{record['model_psnr']:.2f} dB vs copy {record['copy_psnr']:.2f} dB "
            f"({record['gain_db']:+.2f}, {record['pairs_won']}/{record['pairs']} won): {record['verdict']}")
