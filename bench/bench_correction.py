"""What a Projector's correction does to a stream: one bundle's Predictor, another's Projector.

    python -m bench.bench_correction PREDICTOR_BUNDLE [--projector BUNDLE | --train CLIP
        --minutes 6 --set field=value ...] [--tcorr 0,1,3] [--weight W] [--passes N]
        [--margin PX] [--coarse LEVEL:WEIGHT] [--layout PULL:SIGMA:MOTION[:WINDOW]] [--steps N] [--method ddim]
        [--frames 300] [--seed 0]
        [--figures DIR] [--threads 1]

For each correction level T_corr: next-frame PSNR on the predictor bundle's held-out pairs against
copying the frame (DDIM --steps, then the correction, as served: with the predictor bundle's
correction weight, passes, Predictor margin, coarse correction and layout hold unless --weight,
--passes, --margin, --coarse, --layout; --coarse 0:1 and --layout 0:0:0 are none; a WINDOW above 0
holds each pixel to the start frame's and the clip's layouts, the held-out frames' left out of the
next frame's, as the trainer scores it), and a
`--frames` extrapolation from the clip's frame 0 scored as `sinfusion-quality stability` does
(late / early NNFDIST, colour bands), with a contact sheet per level in --figures. --train first
trains a Projector alone on CLIP with the cpu preset and the --set overrides (the Projector gets
the whole --minutes), into --work.
Prints one line per level. docs/training.md, "Projector correction", was measured with it.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.bench_recipe import parse_value


def train_projector(clip: str, minutes: float, overrides: dict, work: Path) -> Path:
    from sinfusion.trainer.presets import get_preset
    from sinfusion.trainer.training import train_bundle

    config = get_preset("cpu", **{"projector_steps": 10**7, **overrides,
                                  "time_budget_s": minutes * 60})
    bundle = train_bundle(clip, work, config, roles=["projector"], overwrite=True, progress=False,
                          device="cpu")
    print(f"projector: {bundle.role('projector').trained_steps} steps in {minutes:g} min, "
          f"{overrides or 'the cpu preset'}", flush=True)
    return work


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictor", help="bundle whose Predictor (and clip) is scored")
    parser.add_argument("--projector", help="bundle whose Projector corrects (default: the same)")
    parser.add_argument("--train", metavar="CLIP", help="train a Projector alone on CLIP first")
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--work", default="out/bench_correction")
    parser.add_argument("--tcorr", default="0,1", help="correction levels, comma-separated")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--figures", help="folder for a contact sheet per level")
    parser.add_argument("--weight", type=float, help="correction weight (default: the predictor "
                                                     "bundle's)")
    parser.add_argument("--passes", type=int, help="corrections per frame (default: the predictor "
                                                   "bundle's)")
    parser.add_argument("--margin", type=int, help="the Predictor's margin in px (default: the "
                                                   "predictor bundle's)")
    parser.add_argument("--coarse", help="coarse correction LEVEL:WEIGHT before the passes "
                                          "(default: the predictor bundle's; 0:1 = none)")
    parser.add_argument("--layout", help="layout hold PULL:SIGMA:MOTION[:WINDOW] of a stream's "
                                          "frames (default: the predictor bundle's; 0:0:0 = none)")
    parser.add_argument("--steps", type=int, help="sampler steps (default: the served default)")
    parser.add_argument("--method", default="ddim", help="the Predictor's sampler: ddim or ddpm")
    parser.add_argument("--seed", type=int, default=0, help="the extrapolation's random seed")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from sinfusion import nextframe
    from sinfusion.bundle import Bundle
    from sinfusion.frames import to_model
    from sinfusion.quality.nnf import PatchMatchOptions, nearest_neighbour_field
    from sinfusion.quality.stability import _collect, colour_stats, stability_checks, write_sheet
    from sinfusion.runtimes.torch_runtime import TorchDenoiser, load_network
    from sinfusion.sampling import DEFAULT_DDIM_STEPS, SamplingOptions, extrapolate
    from sinfusion.trainer.monitor import holdout_count, seen_layouts

    torch.set_num_threads(args.threads)
    projector = args.projector or args.predictor
    if args.train:
        overrides = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.set)}
        projector = train_projector(args.train, args.minutes, overrides, Path(args.work))
    pb, jb = Bundle.open(args.predictor), Bundle.open(projector)
    if args.layout is not None:  # the bundle then makes each pixel's pull from its clip, as served
        m = pb.manifest
        pull, sigma, motion, *window = args.layout.split(":")
        m.layout_pull, m.layout_sigma, m.layout_motion = float(pull), float(sigma), float(motion)
        m.layout_window = int(window[0]) if window else 0
    denoiser = TorchDenoiser.from_networks({"predictor": load_network(pb, "predictor"),
                                            "projector": load_network(jb, "projector")})
    sampling = pb.sampling()
    sampling = replace(sampling, roles={**sampling.roles, "projector": jb.sampling()["projector"]})
    if args.weight is not None:
        sampling = replace(sampling, correction_weight=args.weight)
    if args.passes is not None:
        sampling = replace(sampling, correction_passes=args.passes)
    if args.margin is not None:
        sampling = replace(sampling, predictor_margin=args.margin)
    if args.coarse is not None:
        level, weight = args.coarse.split(":")
        sampling = replace(sampling, coarse_correction_level=int(level),
                           coarse_correction_weight=float(weight))
    frames = pb.frames()
    held_out = holdout_count(len(frames))
    pairs = nextframe.holdout_pairs(len(frames), held_out)
    # Held to the clip, the next frame is held to the trained frames' pictures only, as the
    # trainer scores it: the held-out frames' would pull each prediction to its own target.
    scored = replace(sampling, clip_layouts=seen_layouts(
        sampling, frames, (len(frames) - held_out, len(frames))))
    for level in (int(v) for v in args.tcorr.split(",")):
        started = time.monotonic()
        options = SamplingOptions(args.steps or DEFAULT_DDIM_STEPS, args.method, level)
        scores = nextframe.score_pairs(frames, pairs, nextframe.predict_pairs(
            denoiser, scored, frames, pairs, 1, options, 0, 16))
        loop = extrapolate(sampling, to_model(frames[0]), args.frames, 1, np.random.default_rng(args.seed),
                           options)
        clip = np.concatenate([frames[:1], _collect([loop], denoiser, [args.frames])[0]])
        field = nearest_neighbour_field(clip, frames, PatchMatchOptions())
        checks = stability_checks(field.per_frame_distance().tolist(),
                                  {"original": colour_stats(frames), "extrapolated": colour_stats(clip)})
        if args.figures:
            Path(args.figures).mkdir(parents=True, exist_ok=True)
            write_sheet(Path(args.figures) / f"{pb.name}-tcorr{level}-sheet.png", [clip], 16, 8)
        colours = " ".join(f"{stat} {checks[stat]['late_range']} in {checks[stat]['band']}"
                           for stat in ("mean", "std", "saturation"))
        print(f"T_corr {level}: next frame {scores['model_psnr']:.2f} vs copy {scores['copy_psnr']:.2f} "
              f"({scores['model_psnr'] - scores['copy_psnr']:+.2f} dB, {scores['model_wins']}/{len(pairs)} "
              f"won) | {args.frames} frames: ratio {checks['ratio']:.2f}, late NNFDIST "
              f"{checks['late_nnfdist']:.2e} | {colours} | {time.monotonic() - started:.0f} s",
              flush=True)
    print(f"command: python -m bench.bench_correction {' '.join(sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
