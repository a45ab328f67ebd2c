"""Generated clips scored with NNF, and long-run stability of extrapolation (paper sections 6-7).

Diversity: new clips from a bundle (Projector for the first frame, then Predictor -> Projector, paper
section 6.1) and three references built from the original clip, all scored against the original:
a copy (NNFDIV ~ 0, NNFDIST 0), a translated copy (NNFDIV ~ 0, small NNFDIST from the wrapped seam)
and uniform noise (NNFDIST high). A generated clip should sit between: small distance, high diversity.

Stability: extrapolate hundreds of frames from one frame of the clip and record, per generated frame,
the NNFDIST of its 3x3x3 patches against the original clip plus simple colour statistics. Drift
(colours washing out, noise building up, structure dissolving) shows as a rising curve.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from sinfusion.bundle import Bundle
from sinfusion.frames import to_model, to_uint8
from sinfusion.sampling import (BundleSampling, Frame, SamplingOptions, extrapolate, generate,
                                options_record, run_lockstep)

from .nnf import NNFResult, PatchMatchOptions, nearest_neighbour_field


def _denoiser(bundle: Bundle, roles: list[str]):
    from sinfusion.runtimes.torch_runtime import TorchDenoiser

    return TorchDenoiser(bundle, roles=roles)


def _collect(loops, denoiser, counts: list[int], progress: Callable[[], None] | None = None
             ) -> list[np.ndarray]:
    """Run loops in lock-step and gather each one's frames as uint8 (N, H, W, 3); `progress` is
    called once per frame made."""
    frames: list[list[np.ndarray | None]] = [[None] * c for c in counts]

    def keep(i: int, frame: Frame) -> None:
        frames[i][frame.index] = frame.image
        if progress is not None:
            progress()

    run_lockstep(loops, denoiser, keep)
    return [to_uint8(np.stack(f)) for f in frames]


def generate_clips(bundle: Bundle, clips: int, frames: int, sampling: SamplingOptions,
                   seed: int = 0, denoiser=None) -> list[np.ndarray]:
    """`clips` new clips of `frames` frames each, uint8 (frames, H, W, 3); clip c uses seed (seed, c)."""
    m = bundle.manifest
    denoiser = denoiser or _denoiser(bundle, ["predictor", "projector"])
    bundle_sampling = bundle.sampling()
    clip = bundle.frames() if m.mode == "video" else None  # as Generate serves: from a clip frame
    loops = [generate(bundle_sampling, (m.height, m.width), frames, np.random.default_rng([seed, c]),
                      sampling, clip=clip) for c in range(clips)]
    return _collect(loops, denoiser, [frames] * clips)


def extrapolate_clip(bundle: Bundle, start: int, frames: int, k: int, sampling: SamplingOptions,
                     seed: int = 0, denoiser=None, bundle_sampling: BundleSampling | None = None,
                     progress: Callable[[], None] | None = None) -> np.ndarray:
    """The clip's frame `start` followed by `frames` predicted frames, uint8 (frames+1, H, W, 3),
    sampled with the bundle's facts (or `bundle_sampling`, the same bundle's served otherwise);
    `progress` is called once per predicted frame."""
    original = bundle.frames()
    if not 0 <= start < len(original):
        raise ValueError(f"start frame must be in [0, {len(original) - 1}], got {start}")
    roles = [r for r in ("predictor", "projector") if r in bundle.roles]
    denoiser = denoiser or _denoiser(bundle, roles)
    loop = extrapolate(bundle_sampling or bundle.sampling(), to_model(original[start]), frames, k,
                       np.random.default_rng(seed), sampling)
    (out,) = _collect([loop], denoiser, [frames], progress)
    return np.concatenate([original[start:start + 1], out])


def references(clip: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Clips with known answers: a copy, a spatially translated copy (wrapping), uniform noise."""
    _, h, w, _ = clip.shape
    rng = np.random.default_rng(seed)
    return {
        "copy": clip.copy(),
        "translated": np.roll(clip, (max(1, h // 8), max(1, w // 8)), axis=(1, 2)),
        "noise": rng.integers(0, 256, clip.shape, dtype=np.uint8),
    }


def colour_stats(clip: np.ndarray) -> dict[str, list[float]]:
    """Per-frame mean brightness, contrast (std) and saturation (max-min over RGB), on [0, 1]."""
    x = clip.astype(np.float64) / 255.0
    return {
        "mean": x.mean(axis=(1, 2, 3)).tolist(),
        "std": x.std(axis=(1, 2, 3)).tolist(),
        "saturation": (x.max(axis=-1) - x.min(axis=-1)).mean(axis=(1, 2)).tolist(),
    }


def holdout_reference(original: np.ndarray, patchmatch: PatchMatchOptions) -> dict:
    """NNFDIST / NNFDIV of the clip's second half against its first half.

    A yardstick from real footage: how far genuinely new frames of this scene are from the frames a
    model could have learned from. A generator whose frames score far above it is off-distribution.
    """
    half = len(original) // 2
    if half < 3 or len(original) - half < 3:
        return {}
    result = nearest_neighbour_field(original[half:], original[:half], patchmatch)
    return {"query_frames": [half, len(original) - 1], "reference_frames": [0, half - 1],
            **result.summary()}


def write_sheet(path: Path, clips: list[np.ndarray], per_clip: int, columns: int) -> None:
    """Contact sheet of `per_clip` evenly spaced frames of each clip (first and last included)."""
    from sinfusion.io.files import write_image
    from sinfusion.video import contact_sheet

    rows = [c[np.linspace(0, len(c) - 1, min(per_clip, len(c))).round().astype(int)] for c in clips]
    write_image(path, contact_sheet(np.concatenate(rows), columns=columns))


def diversity_report(bundle_path, clips: int = 3, frames: int = 33,
                     sampling: SamplingOptions = SamplingOptions(),
                     patchmatch: PatchMatchOptions = PatchMatchOptions(), seed: int = 0,
                     figures: str | Path | None = None, prefix: str = "") -> dict:
    """NNFDIV / NNFDIST of generated clips and of the references; contact sheet and NNF maps."""
    from .plots import plot_nnf_maps

    bundle = Bundle.open(bundle_path)
    original = bundle.frames()
    started = time.monotonic()
    generated = generate_clips(bundle, clips, frames, sampling, seed)
    sampling_s = time.monotonic() - started
    scores: dict[str, dict] = {}
    fields: dict[str, NNFResult] = {}
    for name, clip in [*[(f"generated_{c}", g) for c, g in enumerate(generated)],
                       *references(original[:frames], seed).items()]:
        result = nearest_neighbour_field(clip, original, patchmatch)
        fields[name] = result
        scores[name] = result.summary()
    gen = [scores[f"generated_{c}"] for c in range(clips)]
    report = {
        "bundle": str(bundle_path),
        "frames": frames,
        "size": [bundle.manifest.width, bundle.manifest.height],
        "sampling": options_record(sampling, bundle.sampling()),
        "patchmatch": asdict(patchmatch),
        "seed": seed,
        "sampling_seconds": round(sampling_s, 1),
        "holdout": holdout_reference(original, patchmatch),
        "generated_mean": {"nnfdist": float(np.mean([g["nnfdist"] for g in gen])),
                           "nnfdiv": float(np.mean([g["nnfdiv"] for g in gen]))},
        "scores": scores,
        "colour": {"original": colour_stats(original),
                   **{f"generated_{c}": colour_stats(g) for c, g in enumerate(generated)}},
    }
    if figures is not None:
        out = Path(figures)
        out.mkdir(parents=True, exist_ok=True)
        write_sheet(out / f"{prefix}generated-sheet.png", [original[:frames], *generated], 8, 8)
        plot_nnf_maps({n: fields[n] for n in ("generated_0", "copy", "translated")},
                      {"generated_0": generated[0], "copy": original[:frames],
                       "translated": references(original[:frames], seed)["translated"]},
                      out / f"{prefix}nnf-maps.png")
        report["figures"] = [str(out / f"{prefix}generated-sheet.png"), str(out / f"{prefix}nnf-maps.png")]
    return report


DRIFT_GOAL = 1.5  # late over early NNFDIST a long run should stay within (docs/quality.md)
COLOUR_STATS = (("mean", "brightness"), ("std", "contrast"), ("saturation", "saturation"))
# How far past its band a colour statistic may read and still count as inside: a fortieth of a grey
# level. A stream holds its start frame's brightness and contrast, and where that frame is the
# clip's darkest or most contrasted the late frames read its value give or take 1e-5 (8-bit
# rounding): at the band's edge, not past it.
COLOUR_TOLERANCE = 1e-4


def checks_line(checks: dict) -> str:
    """stability_checks as one line for the shell: the drift against its goal, and the share of the
    late frames whose colours stay inside the clip's band."""
    (e0, e1), (l0, l1) = checks["early_frames"], checks["late_frames"]
    verdict = "within" if checks["ratio"] <= DRIFT_GOAL else "over"
    inside = ", ".join(f"{name} {checks[stat]['inside']:.0%}" for stat, name in COLOUR_STATS)
    line = (f"drift {checks['ratio']:.2f} (NNFDIST of frames {l0}-{l1} over frames {e0}-{e1}, "
            f"{verdict} the goal of {DRIFT_GOAL}); frames {l0}-{l1} inside the clip's colour band: "
            f"{inside}")
    if "motion" in checks:
        line += f"; they change {checks['motion']['ratio']:.0%} as much per frame as the clip"
    return line


def drift_check(per_frame: list[float], early: int = 10, late: int = 50) -> dict:
    """How far a stream's late frames are from the clip against its early ones: per_frame[i] is the
    NNFDIST of output frame i + 1; `ratio` = mean over the last `late` frames / mean over frames
    1..early (both at most a quarter of the stream)."""
    values = np.asarray(per_frame, np.float64)
    quarter = max(1, len(values) // 4)
    early, late = min(early, quarter), min(late, quarter)
    first, last = values[:early], values[-late:]
    return {"early_frames": [1, early], "late_frames": [len(values) + 1 - late, len(values)],
            "early_nnfdist": float(first.mean()), "late_nnfdist": float(last.mean()),
            "ratio": float(last.mean() / max(first.mean(), 1e-12))}


def late_count(checks: dict) -> int:
    """How many late frames `drift_check` scored (its "late_frames" range, both ends included)."""
    first, last = checks["late_frames"]
    return last + 1 - first


def mean_change(frames: np.ndarray, step: int = 1) -> float:
    """Mean absolute change per pixel and channel, on [0, 1], between frames `step` apart (uint8
    frames (N, H, W, 3), N > step), a frame pair at a time."""
    total = 0.0
    for a, b in zip(frames[:-step], frames[step:]):
        total += float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
    return total / (len(frames) - step) / 255.0


def motion_check(original: np.ndarray, stream: np.ndarray, k: int = 1, late: int = 50) -> dict:
    """How fast a stream's late frames change against the clip: `late` is the mean change between
    consecutive frames over its last `late` frames (each a step of k in the clip), `clip` the mean
    change between the clip's frames |k| apart, `ratio` the one over the other. NNFDIST alone
    cannot tell a living stream from a frozen one (a still frame of the clip has no drift at all):
    near 1 the late frames move at the clip's pace, near 0 they stand still."""
    step = min(max(1, abs(k)), len(original) - 1)
    late = max(1, min(late, len(stream) - 1))
    clip_change = mean_change(original, step)
    late_change = mean_change(stream[-late - 1:])
    return {"clip": round(clip_change, 6), "late": round(late_change, 6),
            "ratio": round(late_change / max(clip_change, 1e-12), 3)}


def stability_checks(per_frame: list[float], colour: dict, early: int = 10, late: int = 50) -> dict:
    """The long-run criteria: late NNFDIST against early, and colour inside the original's band.

    The drift is `drift_check`'s: a clip that washes out or builds up noise drifts up (the target
    is ratio <= 1.5 over 300 frames). For
    brightness (mean), contrast (std) and saturation, `inside` is the share of the late frames whose
    value lies in [min, max] of the original clip's frames (give or take COLOUR_TOLERANCE), and
    `band` / `late_range` show both.
    """
    checks = drift_check(per_frame, early, late)
    late = late_count(checks)
    generated = colour["extrapolated"] if "extrapolated" in colour else colour["generated"]
    for stat, _ in COLOUR_STATS:
        band = (min(colour["original"][stat]), max(colour["original"][stat]))
        late_values = np.asarray(generated[stat][-late:])
        checks[stat] = {"band": [round(band[0], 4), round(band[1], 4)],
                        "late_range": [round(float(late_values.min()), 4),
                                       round(float(late_values.max()), 4)],
                        "inside": float(np.mean((late_values >= band[0] - COLOUR_TOLERANCE)
                                                & (late_values <= band[1] + COLOUR_TOLERANCE)))}
    return checks


def stability_report(bundle_path, frames: int = 300, start: int = 0, k: int = 1,
                     sampling: SamplingOptions = SamplingOptions(),
                     patchmatch: PatchMatchOptions = PatchMatchOptions(), seed: int = 0,
                     figures: str | Path | None = None, prefix: str = "",
                     generated: bool = False) -> dict:
    """Extrapolate `frames` frames from clip frame `start` (or, `generated`, make a new clip of
    frames + 1 with Generate: Projector first frame, then Predictor -> Projector); NNFDIST and colour
    per frame, and the long-run checks."""
    from .plots import plot_stability

    bundle = Bundle.open(bundle_path)
    original = bundle.frames()
    started = time.monotonic()
    if generated:
        clip = generate_clips(bundle, 1, frames + 1, sampling, seed)[0]
    else:
        clip = extrapolate_clip(bundle, start, frames, k, sampling, seed)
    sampling_s = time.monotonic() - started
    result = nearest_neighbour_field(clip, original, patchmatch)
    holdout = holdout_reference(original, patchmatch)
    report = {
        "bundle": str(bundle_path), "mode": "generate" if generated else "extrapolate",
        "start": None if generated else start, "k": k, "frames": frames,
        "size": [bundle.manifest.width, bundle.manifest.height],
        "seed": seed,
        "sampling": options_record(sampling, bundle.sampling()),
        "patchmatch": asdict(patchmatch),
        "sampling_seconds": round(sampling_s, 1),
        "nnfdist": result.nnfdist, "nnfdiv": result.nnfdiv,
        # Patches centred on output frame f (1 .. frames-1; frame 0 is the real start frame).
        "per_frame_nnfdist": result.per_frame_distance().tolist(),
        "holdout": holdout,
        "colour": {"original": colour_stats(original), "extrapolated": colour_stats(clip)},
    }
    report["checks"] = stability_checks(report["per_frame_nnfdist"], report["colour"])
    report["checks"]["motion"] = motion_check(original, clip, 1 if generated else k,
                                              late_count(report["checks"]))
    if figures is not None:
        out = Path(figures)
        out.mkdir(parents=True, exist_ok=True)
        plot_stability(report, out / f"{prefix}stability.png")
        write_sheet(out / f"{prefix}stability-sheet.png", [clip], 16, 8)
        report["figures"] = [str(out / f"{prefix}stability.png"),
                             str(out / f"{prefix}stability-sheet.png")]
    return report
