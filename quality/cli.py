"""`sinfusion-quality`: the quality instruments from the shell.

    sinfusion-quality nnf QUERY REFERENCE            NNFDIV / NNFDIST of a clip against the original
    sinfusion-quality nextframe CLIP --n 16 --k 1    train on n frames, predict unseen ones vs copy
    sinfusion-quality plot-nextframe R.json... --by n|speed --out fig.png
    sinfusion-quality diversity BUNDLE --clips 3     generated clips + references, NNF scores, sheets
    sinfusion-quality stability BUNDLE --frames 300  extrapolate far, NNFDIST per frame, plot
    sinfusion-quality upsample BUNDLE                rebuild every other frame vs the 50/50 blend

Results are JSON (written atomically); figures are PNG. Mistakes end with one line on stderr and the
exit codes of sinfusion.io.cli (docs/cli.md): 2 a bad argument, 3 an input that cannot be used (a
missing clip, a folder that is not a bundle, a bundle without the role), 4 an output that cannot be
written. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sinfusion.io.atomic import atomic_write_json
from sinfusion.io.cli import (EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OUTPUT, InputError, Parser, UsageError,
                              add_sampling_args, duration, fail, sampling_choice, usage_failed)

PROG = "sinfusion-quality"


def _positive(name: str, value: int, low: int = 1) -> int:
    if value < low:
        raise UsageError(f"--{name} must be >= {low}, got {value}")
    return value


def _read(path: str, max_side: int):
    from sinfusion.video import read_clip

    return read_clip(path, max_side=max_side).frames


def _patchmatch_options(args):
    from .nnf import PatchMatchOptions

    options = PatchMatchOptions(iterations=args.iterations, search_dims=args.search_dims,
                                seed=args.seed)
    try:
        options.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return options


def _sampling_options(args, correction: int | None, bundle=None, loop: str = "extrapolate"):
    """The sampling flags over the server's default for `loop`; with a bundle, checked against its
    schedules. correction: T_corr when --correction-steps is not given (None: the bundle's, as the
    server samples)."""
    from sinfusion.sampling import SamplingOptions

    if correction is None:
        correction = bundle.manifest.correction_steps if bundle is not None else 3
    options = SamplingOptions.chosen(**sampling_choice(args), default_correction=correction, loop=loop)
    if bundle is not None:
        try:
            options.validate(min(rs.schedule.steps for rs in bundle.sampling().roles.values()))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return options


def _bundle(path: str, roles: tuple[str, ...], min_frames: int = 1):
    """The bundle a command measures, refused (exit 3) without the roles and frames it needs."""
    from sinfusion.bundle import Bundle

    bundle = Bundle.open(path)
    for role in roles:
        bundle.role(role)  # BundleError naming the roles it has
    if bundle.manifest.frame_count < min_frames:
        raise InputError(f"{path}: has {bundle.manifest.frame_count} frames; this needs at least "
                         f"{min_frames}")
    return bundle


def _emit(result: dict, out: str | None) -> None:
    if out:
        atomic_write_json(out, result)
        print(f"{PROG}: wrote {out}", file=sys.stderr)
    else:
        print(json.dumps(result, indent=2))


# --- commands ------------------------------------------------------------------------------------

def cmd_nnf(args) -> None:
    from .nnf import check_clip, nearest_neighbour_field

    query, reference = _read(args.query, args.max_side), _read(args.reference, args.max_side)
    for name, path, clip in (("query", args.query, query), ("reference", args.reference, reference)):
        try:
            check_clip(name, clip)
        except ValueError as exc:
            raise InputError(f"{path}: {exc}") from None
    result = nearest_neighbour_field(query, reference, _patchmatch_options(args))
    _emit({"query": args.query, "reference": args.reference, **result.summary(),
           "per_frame_nnfdist": result.per_frame_distance().tolist()}, args.out)


def cmd_nextframe(args) -> None:
    import time

    from sinfusion.runtimes.torch_runtime import TorchDenoiser
    from sinfusion.trainer.presets import TIME_SHARES, get_preset

    from .nextframe import evaluate, make_split, train_split

    # The Predictor trains for the preset's steps or its share of the preset's time budget (the cpu
    # preset: 9 of 15 minutes), whichever ends first; --train-steps / --time replace either.
    try:
        config = get_preset(args.preset, preview_every=0, seed=args.seed, holdout=0)
    except ValueError as exc:  # an unknown preset; the message lists the valid ones
        raise UsageError(str(exc)) from None
    steps = config.predictor_steps if args.train_steps is None else args.train_steps
    budget = (config.time_budget_s * TIME_SHARES["predictor"] if args.time is None else args.time)
    config = get_preset(args.preset, predictor_steps=_positive("train-steps", steps),
                        time_budget_s=budget, checkpoint_every=max(100, min(steps // 4, 1000)),
                        preview_every=0, seed=args.seed, holdout=0)
    frames = _read(args.clip, args.max_side if args.max_side >= 0 else config.max_side)
    try:
        ks = [int(k) for k in args.k.split(",")]
    except ValueError:
        raise UsageError(f"--k must be comma-separated integers in [1, 3], got {args.k!r}") from None
    try:
        splits = [make_split(len(frames), args.n, args.speed, k, args.start, args.max_pairs)
                  for k in ks]
    except ValueError as exc:  # --n, --speed, --k, --start or --max-pairs do not fit the clip
        raise UsageError(str(exc)) from None
    work = Path(args.work) / f"n{args.n}-s{args.speed}-p{args.start}"
    started = time.monotonic()
    bundle = train_split(frames, splits[0], work, config, progress=not args.quiet)
    train_seconds = round(time.monotonic() - started, 1)
    entry = bundle.role("predictor")
    denoiser = TorchDenoiser(bundle, roles=["predictor"])
    results = []
    for split in splits:
        sheet = None
        if args.figures:
            Path(args.figures).mkdir(parents=True, exist_ok=True)
            sheet = Path(args.figures) / f"nextframe-n{args.n}-s{args.speed}-k{split.k}-sheet.png"
        r = evaluate(denoiser, bundle.sampling(), frames, split, _sampling_options(args, 0), args.seed,
                     sheet=sheet)
        results.append({"k": split.k, **r})
        if split.seen and split is splits[0]:  # training pairs (first k only: a diagnostic that
            # tells under-fitting from failing to generalise, not worth doubling every run's time)
            seen = evaluate(denoiser, bundle.sampling(), frames, split.seen_split(),
                            _sampling_options(args, 0), args.seed)
            results[-1]["seen"] = {key: seen[key] for key in ("model_mse", "copy_mse", "model_psnr",
                                                             "copy_psnr", "model_wins")}
            results[-1]["seen"]["pairs"] = len(split.seen)
        print(f"{PROG}: n={args.n} S={args.speed} k={split.k}: model MSE {r['model_mse']:.3e} "
              f"({r['model_psnr']:.2f} dB), copy MSE {r['copy_mse']:.3e} ({r['copy_psnr']:.2f} dB), "
              f"model better on {r['model_wins']}/{len(split.pairs)} pairs", file=sys.stderr)
    _emit({
        "clip": args.clip, "frames": len(frames), "height": int(frames.shape[1]),
        "width": int(frames.shape[2]), "n": args.n, "speed": args.speed, "start": args.start,
        "bundle": str(work), "network": entry.network.to_dict(), "trained_steps": entry.trained_steps,
        "train_seconds_this_call": train_seconds,
        "train_seconds_total": _elapsed(work, "predictor"),
        "results": results,
    }, args.out)


def _elapsed(bundle_dir: Path, role: str) -> float | None:
    """Wall seconds the trainer spent on a role (its checkpoint record), None when unrecorded."""
    try:
        return json.loads((Path(bundle_dir) / "training" / f"{role}.json").read_text())["elapsed_s"]
    except (OSError, json.JSONDecodeError, KeyError):
        return None


def cmd_plot_nextframe(args) -> None:
    from .plots import plot_nextframe

    runs = []
    for path in args.results:
        try:
            runs.append(json.loads(Path(path).read_text()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not a readable result file ({exc})") from None
        if not isinstance(runs[-1], dict) or not {"n", "speed", "results"} <= set(runs[-1]):
            raise InputError(f"{path}: not a `nextframe` result (needs n, speed and results)")
    if args.by == "n" and not any(r["speed"] == 1 for r in runs):
        raise UsageError("--by n plots speed-1 runs; these files hold none (use --by speed)")
    plot_nextframe(runs, args.out, by=args.by, title=args.title)
    print(f"{PROG}: wrote {args.out}", file=sys.stderr)


def cmd_diversity(args) -> None:
    from sinfusion.sampling import generate_defaults

    from .stability import diversity_report

    clips, frames = _positive("clips", args.clips), _positive("frames", args.frames, 3)
    bundle = _bundle(args.bundle, ("projector", "predictor"))
    result = diversity_report(args.bundle, clips=clips, frames=frames,
                              sampling=_sampling_options(args, None, bundle,
                                                         generate_defaults(bundle.manifest.mode)),
                              patchmatch=_patchmatch_options(args), seed=args.seed,
                              figures=args.figures or None, prefix=args.prefix)
    _emit(result, args.out)


def _start_frame(value: str, count: int) -> int:
    """--start-frame as an index of the bundle's `count` frames ('last': the last one)."""
    if value == "last":
        return count - 1
    try:
        start = int(value)
    except ValueError:
        raise UsageError(f"--start-frame must be a frame index or 'last', got {value!r}") from None
    if not 0 <= start < count:
        raise UsageError(f"--start-frame must be in [0, {count - 1}] or 'last', got {start}")
    return start


def cmd_stability(args) -> None:
    from sinfusion.sampling import generate_defaults, validate_k

    from .stability import checks_line, stability_report

    frames = _positive("frames", args.frames, 3)
    bundle = _bundle(args.bundle, ("projector", "predictor") if args.generate else ("predictor",))
    start = _start_frame(args.start_frame, bundle.manifest.frame_count)
    try:
        validate_k(args.k)
    except ValueError as exc:
        raise UsageError(f"--{exc}") from None
    loop = generate_defaults(bundle.manifest.mode) if args.generate else "extrapolate"
    result = stability_report(args.bundle, frames=frames, generated=args.generate,
                              start=start, k=args.k,
                              sampling=_sampling_options(args, None, bundle, loop),
                              patchmatch=_patchmatch_options(args), seed=args.seed,
                              figures=args.figures or None, prefix=args.prefix)
    what = "generated" if args.generate else f"extrapolated from frame {start}"
    print(f"{PROG}: {frames} frames {what}: {checks_line(result['checks'])}", file=sys.stderr)
    _emit(result, args.out)


def cmd_upsample(args) -> None:
    from .upsampling import upsampling_report

    bundle = _bundle(args.bundle, ("interpolator",), min_frames=3)
    options = _sampling_options(args, None, bundle, "upsample")
    sheet = None
    if args.figures:
        Path(args.figures).mkdir(parents=True, exist_ok=True)
        sheet = Path(args.figures) / f"{args.prefix}upsample-sheet.png"
    r = upsampling_report(bundle, options, args.seed, sheet=sheet)
    where = "held-out" if r["held_out"] else "seen-in-training"
    print(f"{PROG}: upsample x2 on {r['triplets']} {where} triplets: model {r['model_psnr']:.2f} dB, "
          f"blend {r['blend_psnr']:.2f} dB, model better on {r['model_wins']}/{r['triplets']}",
          file=sys.stderr)
    _emit(r, args.out)


# --- parser --------------------------------------------------------------------------------------

def _add_patchmatch(p: argparse.ArgumentParser) -> None:
    p.add_argument("--iterations", type=int, default=6, help="PatchMatch rounds (default 6)")
    p.add_argument("--search-dims", type=int, default=16,
                   help="PCA dims compared while searching, 0 = exact 81-dim (default 16)")


def _add_sampling(p: argparse.ArgumentParser, correction: bool) -> None:
    add_sampling_args(p, correction, steps_flag="--sampling-steps")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="SinFusion quality instruments")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("nnf", help="NNFDIV / NNFDIST of a clip against a reference clip")
    p.add_argument("query")
    p.add_argument("reference")
    p.add_argument("--max-side", type=int, default=0, help="cap of the long side (0 = keep size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON file (default: stdout)")
    _add_patchmatch(p)
    p.set_defaults(func=cmd_nnf)

    p = sub.add_parser("nextframe", help="train on n frames, predict unseen frames, vs copy baseline")
    p.add_argument("clip")
    p.add_argument("--n", type=int, default=16, help="training frames (default 16)")
    p.add_argument("--speed", type=int, default=1, help="temporal subsampling S (default 1)")
    p.add_argument("--k", default="1", help="frame steps to test, comma-separated (default 1)")
    p.add_argument("--start", type=int, default=0, help="first training frame (default 0)")
    p.add_argument("--max-pairs", type=int, default=100, help="test pairs at most (default 100)")
    p.add_argument("--preset", default="cpu", help="trainer preset (default cpu)")
    p.add_argument("--train-steps", type=int, default=None,
                   help="Predictor steps (default: the preset's; the cpu preset is time-bound)")
    p.add_argument("--time", type=duration, default=None,
                   help="Predictor training time, e.g. 10m (default: the preset's predictor share)")
    p.add_argument("--max-side", type=int, default=-1, help="long side cap (default: the preset's)")
    p.add_argument("--work", default="out/quality/nextframe", help="folder for the trained bundles")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no training progress bar")
    p.add_argument("--figures", default="", help="folder for prediction contact sheets (default: none)")
    p.add_argument("--out", help="JSON file (default: stdout)")
    _add_sampling(p, correction=False)
    p.set_defaults(func=cmd_nextframe)

    p = sub.add_parser("plot-nextframe", help="figure-8 style plot of nextframe results")
    p.add_argument("results", nargs="+", help="JSON files written by `nextframe`")
    p.add_argument("--by", choices=("n", "speed"), default="n")
    p.add_argument("--title", default="")
    p.add_argument("--out", required=True, help="PNG file")
    p.set_defaults(func=cmd_plot_nextframe)

    for name, helptext in (("diversity", "generate clips, score them and references with NNF"),
                           ("stability", "extrapolate far from a frame, NNFDIST per frame")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("bundle")
        if name == "diversity":
            p.add_argument("--clips", type=int, default=3, help="generated clips (default 3)")
            p.add_argument("--frames", type=int, default=33, help="frames per clip (default 33)")
        else:
            p.add_argument("--frames", type=int, default=300, help="frames to extrapolate (300)")
            p.add_argument("--start-frame", default="0",
                           help="clip frame to start from: an index, or 'last' (where the paper, "
                                "`trainer sample` and the trainer's layout check extrapolate "
                                "from; default 0)")
            p.add_argument("--k", type=int, default=1, help="frame step (default 1)")
            p.add_argument("--generate", action="store_true",
                           help="a generated clip (Generate) instead of extrapolating a real frame")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--figures", default="", help="folder for PNG figures (default: none)")
        p.add_argument("--prefix", default="", help="prefix of the figure file names")
        p.add_argument("--out", help="JSON file (default: stdout)")
        _add_sampling(p, correction=True)
        _add_patchmatch(p)
        p.set_defaults(func=cmd_diversity if name == "diversity" else cmd_stability)

    p = sub.add_parser("upsample", help="drop every other frame, rebuild it, score against blending")
    p.add_argument("bundle")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figures", default="", help="folder for the contact sheet (default: none)")
    p.add_argument("--prefix", default="", help="prefix of the figure file name")
    p.add_argument("--out", help="JSON file (default: stdout)")
    _add_sampling(p, correction=True)
    p.set_defaults(func=cmd_upsample)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sinfusion.bundle import BundleError
    from sinfusion.io.files import VideoError

    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except UsageError as exc:
        return usage_failed(PROG, exc)
    except (InputError, VideoError, BundleError) as exc:
        return fail(PROG, exc, EXIT_INPUT)
    except OSError as exc:  # inputs are read above as VideoError/BundleError: this is a write
        return fail(PROG, exc, EXIT_OUTPUT)
    except KeyboardInterrupt:
        return fail(PROG, "interrupted", EXIT_INTERRUPTED)
    return 0

if __name__ == "__main__":
    sys.exit(main())
