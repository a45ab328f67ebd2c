"""Temporal upsampling against blending: drop every other frame, rebuild it, score it.

For triplets (i, i+1, i+2) of a bundle's frames, the Interpolator (then Projector correction, as the
server upsamples by default) rebuilds frame i+1 from frames i and i+2; the baseline is the 50/50 blend
of those two frames. Both are scored against the dropped original, as next-frame prediction is
(sinfusion.nextframe: [0, 1] pixels, mean MSE -> PSNR, triplets won).

Which triplets: a bundle trained with held-out frames (manifest "quality".holdout_frames) is scored on
the triplets inside that tail, which no role has seen. Otherwise every triplet i = 0, 2, 4, ... is used
and the report says the frames were seen in training (the Interpolator learned exactly those middles,
so the score flatters it).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sinfusion.bundle import Bundle
from sinfusion.frames import to_uint8
from sinfusion.nextframe import holdout_triplets, predict_middles, score_middles
from sinfusion.sampling import SamplingOptions, options_record


def triplets(bundle: Bundle) -> tuple[list[int], bool]:
    """First frames i of the scored triplets, and whether they were held out of training."""
    n = bundle.manifest.frame_count
    held = bundle.manifest.quality.get("holdout_frames")  # [first, end): the clip's tail
    if held and held[1] - held[0] >= 3:
        return holdout_triplets(held[1], held[1] - held[0]), True
    return list(range(0, n - 2, 2)), False


def upsampling_report(bundle: Bundle, sampling: SamplingOptions, seed: int = 0, batch: int = 16,
                      sheet: str | Path | None = None, sheet_triplets: int = 6,
                      denoiser=None) -> dict:
    """Score the Interpolator's in-between frames and the blend's against the dropped originals.

    sheet: a contact sheet of `sheet_triplets` evenly spaced triplets, one column each; rows: frame
    i, the 50/50 blend, the model's frame, the true frame i+1, frame i+2.
    """
    if "interpolator" not in bundle.roles:
        raise ValueError(f"{bundle.path}: the bundle has no trained interpolator")
    frames = bundle.frames()
    first, held_out = triplets(bundle)
    if not first:
        raise ValueError(f"{bundle.path}: needs at least 3 frames to score upsampling")
    if denoiser is None:
        from sinfusion.runtimes.torch_runtime import TorchDenoiser

        denoiser = TorchDenoiser(bundle, roles=[r for r in ("interpolator", "projector")
                                                if r in bundle.roles])
    started = time.monotonic()
    predicted = predict_middles(denoiser, bundle.sampling(), frames, first, sampling, seed, batch)
    model_frames = to_uint8(predicted)
    blends = ((frames[first].astype(np.float64) + frames[[i + 2 for i in first]]) / 2.0)
    score = score_middles(frames, first, predicted)
    rows = score.pop("triplets")
    result = {
        "bundle": str(bundle.path), "held_out": held_out, "triplets": len(rows), **score,
        "sharpness": {"model": _sharpness(model_frames), "blend": _sharpness(blends),
                      "truth": _sharpness(frames[[i + 1 for i in first]])},
        "sampling": options_record(sampling, bundle.sampling()), "seed": seed,
        "sampling_seconds": round(time.monotonic() - started, 2), "rows": rows,
    }
    if sheet is not None:
        from sinfusion.video import contact_sheet, write_image

        count = min(sheet_triplets, len(first))
        chosen = np.linspace(0, len(first) - 1, count).round().astype(int)
        pick = [first[c] for c in chosen]
        grid = [frames[pick], np.round(blends[chosen]).astype(np.uint8), model_frames[chosen],
                frames[[i + 1 for i in pick]], frames[[i + 2 for i in pick]]]
        write_image(sheet, contact_sheet(np.concatenate(grid), columns=count))
    return result


def _sharpness(frames: np.ndarray) -> float:
    """Mean absolute horizontal + vertical gradient on [0, 1] grey: blur lowers it."""
    grey = np.asarray(frames, np.float64).mean(axis=-1) / 255.0
    return float(np.mean(np.abs(np.diff(grey, axis=-1))) + np.mean(np.abs(np.diff(grey, axis=-2))))
