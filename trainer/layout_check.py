"""Whether a bundle's streams hold their layout: measured on its clip by the trainer.

The layout hold (`sinfusion.sampling.correct`) pulls each frame of a stream towards a (slightly
blurred) picture: its start frame's where the clip stands still, or, with a layout window, at
each pixel the clip frame's that looks most like the frame there. On a scene that
holds still around what moves in it (tornado's cloud and funnel) it stops the Predictor's blur from
dissolving the scene: 300 frames drift about half as far. But where things cross the scene (fish
swimming through open water) a coarser hold to the start frame pulled back its blurred fish, which
the networks drew again as fragments, and the stream drifted half again as far. One recipe must
serve every clip, so the trainer measures it:
once the Predictor and the Projector are trained, it extrapolates `CHECK_FRAMES` frames from the
clip's first frame and from its last (where the paper's extrapolation and `trainer sample` start)
with the hold and without it (seed `CHECK_SEED`, the served sampler), scores each stream as
`sinfusion-quality stability` does (NNFDIST of the last frames over the first ones'), and keeps the
hold only where its worse start drifts less than the free streams' worse start. It makes the
streams the goal scores, 300 frames: at 120 frames (as first built) the check dropped the hold on a
tornado bundle whose drift grows after frame 120 (2.15 held against 2.04 free at 120, 2.11 against
3.52 at 300). From the first frame alone it dropped the hold on a boat_race bundle (1.44 held
against 1.32 free) whose free streams from a later frame grow a grey sheet over the open water
(3.19 from frame 66, 1.53 held; docs/training.md, "Holding the layout"). About 200 s at 128x72 on
one core. A clip that moves nearly everywhere (less than `MIN_HELD_SHARE` of its pixels held at
half the pull or more, such as the demo's waves) has nothing to hold: no stream is made and the
hold is dropped.

The manifest records the measurement as "quality"."layout" ({"held_share", "held", "seconds", and
where streams were made "frames", "seed", "window" (the bundle's layout_window), "starts",
"held_ratios" and "free_ratios" per start, "held_ratio" and "free_ratio", the worse of each, and
"held_motions" and "free_motions" per start: how much the late frames change against the clip's
frames (`motion_check`), which tells a stream that keeps moving from one that meets the drift goal
by standing still}); where the hold is dropped, its `layout_pull` becomes 0.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

from tqdm import tqdm

from sinfusion.bundle import Bundle
from sinfusion.quality.nnf import PatchMatchOptions, nearest_neighbour_field
from sinfusion.quality.stability import drift_check, extrapolate_clip, late_count, motion_check
from sinfusion.runtimes.torch_runtime import TorchDenoiser
from sinfusion.sampling import SamplingOptions

CHECK_FRAMES = 300
CHECK_SEED = 0
MIN_HELD_SHARE = 0.1


def needs_check(bundle: Bundle) -> bool:
    """A bundle that holds its layout, with the two roles a stream runs."""
    return bundle.manifest.layout_pull > 0 and {"predictor", "projector"} <= set(bundle.roles)


def check_layout_hold(bundle: Bundle, frames: int = CHECK_FRAMES, seed: int = CHECK_SEED,
                      announce: bool = False) -> dict:
    """Measure the bundle's layout hold against none and keep it only if it drifts less; the
    manifest is updated and saved. Returns the "quality"."layout" record. `announce`: say on stderr
    that the streams are being made (the trainer's progress)."""
    started = time.monotonic()
    held = bundle.sampling()
    share = float((held.layout_weights >= held.layout_pull / 2).mean())
    if share < MIN_HELD_SHARE:
        return _keep(bundle, {"held_share": round(share, 3), "held": False,
                              "seconds": round(time.monotonic() - started, 1)})
    if announce:
        print(f"trainer: measuring the layout hold ({frames} frames from the clip's first and last "
              f"frames, held and free)", file=sys.stderr, flush=True)
    clip = bundle.frames()
    denoiser = TorchDenoiser(bundle, roles=["predictor", "projector"])
    options = SamplingOptions.chosen(default_correction=bundle.manifest.correction_steps,
                                     loop="extrapolate")

    starts = sorted({0, len(clip) - 1})
    # The same bar as training's: four streams are minutes of work on a CPU.
    bar = tqdm(total=2 * len(starts) * frames, desc=f"{'layout check':>12}", unit="frame",
               file=sys.stderr, disable=not announce, dynamic_ncols=True, leave=True)

    def measure(sampling, name: str) -> tuple[list[float], list[float]]:
        """Each start's drift ratio and motion ratio (motion_check: the late frames' pace)."""
        drifts, motions = [], []
        for start in starts:
            stream = extrapolate_clip(bundle, start, frames, 1, options, seed, denoiser, sampling,
                                      progress=lambda: bar.update(1))
            field = nearest_neighbour_field(stream, clip, PatchMatchOptions())
            drift = drift_check(field.per_frame_distance().tolist())
            drifts.append(round(drift["ratio"], 3))
            motions.append(motion_check(clip, stream, 1, late_count(drift))["ratio"])
            bar.set_postfix_str(f"{name} from {start}: {drifts[-1]:.2f}", refresh=True)
        return drifts, motions

    with bar:
        held_ratios, held_motions = measure(held, "held")
        free_ratios, free_motions = measure(replace(held, layout_weights=None), "free")
    held_ratio, free_ratio = max(held_ratios), max(free_ratios)  # each one's worse start
    return _keep(bundle, {"held_share": round(share, 3), "frames": frames, "seed": seed,
                          "window": bundle.manifest.layout_window, "starts": starts,
                          "held_ratios": held_ratios, "free_ratios": free_ratios,
                          "held_ratio": held_ratio, "free_ratio": free_ratio,
                          "held_motions": held_motions, "free_motions": free_motions,
                          "held": held_ratio < free_ratio,
                          "seconds": round(time.monotonic() - started, 1)})


def _keep(bundle: Bundle, record: dict) -> dict:
    """Record the measurement in the manifest, dropping the hold where it lost; saved."""
    m = bundle.manifest
    if not record["held"]:
        m.layout_pull = 0.0
    m.quality = {**m.quality, "layout": record}
    bundle.save_manifest()
    return record


def layout_line(record: dict) -> str:
    """The manifest's "quality"."layout" record as one line."""
    verdict = "holds its streams' layout" if record["held"] else "does not hold its streams' layout"
    if "frames" not in record:
        return f"{verdict}: the clip holds still at {record['held_share']:.0%} of its pixels only"
    starts = record.get("starts", [0])  # a record from before the second start has one
    several = len(starts) > 1
    origin = f"frames {' and '.join(str(s) for s in starts)}" if several else f"frame {starts[0]}"
    worst = ", the worse start" if several else ""
    # A record from before the clip's layouts were held to has no window: its hold was the start
    # frame's, where the clip holds still.
    held_to = (f"each pixel held to the clip frame nearest it within {record['window']} px"
               if record.get("window") else
               f"the clip holds still at {record['held_share']:.0%} of its pixels")
    line = (f"{verdict}: {record['frames']} frames from {origin} drift "
            f"{record['held_ratio']:.2f} held, {record['free_ratio']:.2f} free (late / early "
            f"NNFDIST{worst}; {held_to})")
    motions = record.get("held_motions" if record["held"] else "free_motions")
    if motions:  # a record from before the motion check has none
        low, high = f"{min(motions):.0%}", f"{max(motions):.0%}"
        share = low if low == high else f"{low}-{high}"
        line += f"; their last frames change {share} as much per frame as the clip"
    return line
