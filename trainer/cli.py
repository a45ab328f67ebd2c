"""The `trainer` command: `trainer train CLIP --out DIR`, `trainer sample BUNDLE --out out.mp4` (or
`--project IMAGE` / `--summary` to still images), and `trainer plot BUNDLE --out losses.png`.

User mistakes (a missing or unreadable clip, a bad range or size, an unknown role or preset, a folder
that is not a bundle) end with one line on stderr and exit code 2 (usage) or 3 (input); Ctrl-C during
training saves a checkpoint and exits 130 with the command that resumes. Anything else is a bug and
keeps its traceback. The convention and its exit codes: sinfusion.io.cli, docs/cli.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

from sinfusion.bundle import BundleError
from sinfusion.io.cli import (EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OUTPUT, Parser, UsageError,
                              add_sampling_args, counted, duration, fail, int_at_least,
                              non_negative_float, positive_float, pull_arg, sampling_choice,
                              scales_arg, size_within, strength_arg, usage_failed, weight_arg)
from sinfusion.io.files import VideoError
from sinfusion.sampling import DEFAULT_STRENGTH, SUMMARY_AXES, SamplingOptions, generate_defaults

PROG = "trainer"


def _roles(text: str) -> list[str]:
    from sinfusion.config import ROLES

    roles = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise argparse.ArgumentTypeError(f"unknown role {', '.join(bad) or '(none)'}; "
                                         f"valid roles: {', '.join(ROLES)}")
    return roles


# How a bundle serves its frames, recorded in its manifest: (flag, type, metavar, TrainConfig field,
# help); each help ends with the presets' defaults.
SERVING_FLAGS = [
    ("--correction-steps", int_at_least(0), "T", "correction_steps",
     "the bundle's default Projector correction level for serving, 0 = none"),
    ("--correction-weight", weight_arg, "W", "correction_weight",
     "share of the Projector's change a served correction keeps, in (0, 1]"),
    ("--correction-passes", int_at_least(1), "N", "correction_passes",
     "corrections of each served frame, each on the last one's result"),
    ("--predictor-margin", int_at_least(0), "PX", "predictor_margin",
     "px of mirrored frame the served Predictor works with past every edge, 0 = none"),
    ("--coarse-correction", int_at_least(0), "T", "coarse_correction_level",
     "level of a coarse correction before those at T_corr, the Projector working with the "
     "Predictor's margin, 0 = none"),
    ("--coarse-weight", weight_arg, "W", "coarse_correction_weight",
     "share of the coarse correction's change a served frame keeps, in (0, 1]"),
    ("--layout-pull", pull_arg, "W", "layout_pull",
     "share of the way each served frame of a stream moves to a held layout, in "
     "[0, 1), 0 = none; kept only where the trainer measures that streams drift less"),
    ("--layout-sigma", positive_float, "PX", "layout_sigma",
     "blur that makes a frame's layout, in px of the trained frames"),
    ("--layout-motion", non_negative_float, "STD", "layout_motion",
     "how much the clip's blurred frames vary where no pixel is held, 0 = every pixel alike"),
    ("--layout-window", int_at_least(0), "PX", "layout_window",
     "hold each pixel to the start frame or clip frame whose layout within PX px looks most "
     "like the frame's, 0 = to the stream's start frame alone"),
]


def build_parser() -> argparse.ArgumentParser:
    from .presets import MIN_CHECK_FRAMES, PRESETS, TIME_SHARES

    # Help that quotes the presets is built from them, so that it cannot go stale (% is argparse's).
    shares = ", ".join(f"{role} {share:.0%}" for role, share in TIME_SHARES.items())
    shares = shares.replace("%", "%%")

    def defaults(name: str) -> str:
        return ", ".join(f"{preset} {getattr(cls(), name):g}" for preset, cls in sorted(PRESETS.items()))

    parser = Parser(prog=PROG, description="Train SinFusion models on one clip; render from them.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a clip's models into a bundle folder")
    t.add_argument("clip", help="video file, folder of numbered frames, or one image")
    t.add_argument("--out", required=True, help="bundle folder to write")
    t.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="cpu (the default: 15 minutes on a CPU, measured against copying the "
                        "frame), tiny (a 2-minute smoke run) or paper (16 blocks x 64 channels, GPU)")
    t.add_argument("--steps", type=int_at_least(1), help="steps for every role (overrides the preset)")
    for role in ("predictor", "projector", "interpolator"):
        t.add_argument(f"--{role}-steps", type=int_at_least(1), metavar="N",
                       help=f"steps for the {role} (overrides --steps and the preset)")
    t.add_argument("--time", type=duration, metavar="DURATION",
                   help=f"wall-clock budget of the whole run, e.g. 15m (shared by the roles: "
                        f"{shares}; the layout check, about 200 s at 128x72, comes on top); preset "
                        f"default")
    t.add_argument("--holdout", type=int_at_least(-1), metavar="N",
                   help="frames at the clip's end kept out of training to measure next-frame "
                        "prediction against copying (-1 = automatic, 0 = off)")
    t.add_argument("--eval-every", type=positive_float, metavar="SECONDS",
                   help="seconds of predictor training between held-out measurements (default 60)")
    for flag, kind, metavar, field_name, text in SERVING_FLAGS:
        t.add_argument(flag, type=kind, metavar=metavar, dest=field_name,
                       help=f"{text} (preset defaults: {defaults(field_name)}; docs/training.md)")
    t.add_argument("--check-frames", type=int_at_least(MIN_CHECK_FRAMES), metavar="N",
                   help="frames per stream of the layout check that keeps or drops the hold "
                        "(default 300, the drift goal's; fewer is quicker and less sure)")
    t.add_argument("--stop-margin", type=non_negative_float, metavar="DB",
                   help="stop the predictor early once it beats copy by DB and stops improving "
                        "(0 = never early; default 0.5)")
    t.add_argument("--roles", type=_roles, help="comma-separated: predictor,projector,interpolator")
    t.add_argument("--resume", action="store_true", help="continue the checkpoints in --out")
    t.add_argument("--overwrite", action="store_true", help="start over in an existing bundle folder")
    t.add_argument("--seed", type=int_at_least(0))
    t.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    t.add_argument("--batch-size", type=int_at_least(1))
    t.add_argument("--lr", type=positive_float, help="initial learning rate (decays to lr/10)")
    t.add_argument("--channels", type=int_at_least(1), help="network width (overrides the preset)")
    t.add_argument("--blocks", type=int_at_least(1), help="ConvNeXt blocks, even (overrides the preset)")
    t.add_argument("--size", type=size_within(8, 4096), help="resize frames to exactly WxH")
    t.add_argument("--max-side", type=int_at_least(0),
                   help="cap the long side when --size is not given (0 = keep; preset default)")
    t.add_argument("--start", type=int_at_least(0), default=0, help="first frame of the clip to use")
    t.add_argument("--end", type=int_at_least(1), help="frame index to stop before")
    t.add_argument("--stride", type=int_at_least(1), default=1, help="keep every Nth frame")
    t.add_argument("--checkpoint-every", type=int_at_least(0), help="steps between checkpoints")
    t.add_argument("--preview-every", type=int_at_least(0), help="steps between preview frames")
    t.add_argument("--name", help="bundle name (default: the clip's file name)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")

    s = sub.add_parser("sample", help="render frames from a bundle to a video file (or images)")
    s.add_argument("bundle", help="bundle folder written by `trainer train`")
    s.add_argument("--out", required=True,
                   help="video to write (.mp4, .mov, .mkv, .webm, .gif); with --project/--summary an "
                        "image (.png, .jpg), or a numbered pattern such as step-%%03d.png")
    mode = s.add_mutually_exclusive_group(required=True)
    mode.add_argument("--extrapolate", type=int_at_least(1), metavar="N",
                      help="N frames forward (k>0) or backward (k<0) from frame --start")
    mode.add_argument("--generate", type=int_at_least(1), metavar="N", help="a new clip of N frames")
    mode.add_argument("--upsample", type=int, choices=(2, 4, 8), help="temporal upsampling factor")
    mode.add_argument("--project", metavar="IMAGE",
                      help="noise IMAGE to --strength and denoise it with the Projector: edits and "
                           "sketches come back in the training image's detail (docs/applications.md)")
    mode.add_argument("--summary", nargs="?", const="", metavar="IMAGE",
                      help="visual summary of IMAGE (default: the bundle's frame --start, else 0): "
                           "shrink by each of --scales, projecting every step")
    s.add_argument("--strength", type=strength_arg, default=None,
                   help=f"--project/--summary: noise std in [0, 1] (0 = unchanged, 1 = pure noise; "
                        f"default {DEFAULT_STRENGTH})")
    s.add_argument("--scales", type=scales_arg, default=None,
                   help="--summary: comma-separated sizes relative to the image, in (0, 1] "
                        "(default 0.9,0.8,0.7,0.6,0.5)")
    s.add_argument("--axes", choices=SUMMARY_AXES, default="both",
                   help="--summary: the sides that shrink (default both)")
    s.add_argument("--start", type=int_at_least(0),
                   help="start frame (default: the last frame for k>0, the first for k<0)")
    s.add_argument("--k", type=int, default=1, help="frame step, nonzero in [-3, 3] (default 1)")
    s.add_argument("--seed", type=int_at_least(0), default=0)
    add_sampling_args(s)
    s.add_argument("--runtime", choices=("torch", "onnx"), default="torch")
    s.add_argument("--device", default="cpu", help="torch runtime device (cpu, cuda)")
    s.add_argument("--sheet", help="also write the frames as a contact sheet PNG")
    s.add_argument("--sheet-columns", type=int_at_least(1), default=8)

    p = sub.add_parser("plot", help="plot a bundle's training loss curves to a PNG")
    p.add_argument("bundle", help="bundle folder written by `trainer train`")
    p.add_argument("--out", required=True, help="PNG to write")
    return parser


def _sampling_options(args: argparse.Namespace, correction: int, loop: str) -> SamplingOptions:
    """The sampler the flags ask for over the service's default for `loop`; `correction`: the
    bundle's T_corr."""
    return SamplingOptions.chosen(**sampling_choice(args), default_correction=correction, loop=loop)


# --- train --------------------------------------------------------------------------------------------

def _train_config(args: argparse.Namespace):
    """Preset (or the resumed run's config) with the options the user gave."""
    from .presets import DEFAULT_PRESET, get_preset, load_run_config

    base = load_run_config(args.out) if args.resume else None
    if base is None or args.preset:
        base = get_preset(args.preset or DEFAULT_PRESET)
    overrides = {
        "seed": args.seed, "batch_size": args.batch_size, "lr": args.lr, "channels": args.channels,
        "blocks": args.blocks, "checkpoint_every": args.checkpoint_every,
        "preview_every": args.preview_every, "max_side": args.max_side,
        "time_budget_s": args.time, "holdout": args.holdout, "eval_every_s": args.eval_every,
        "stop_margin_db": args.stop_margin, "layout_check_frames": args.check_frames,
        **{field_name: getattr(args, field_name) for *_, field_name, _ in SERVING_FLAGS},
        **{f"{role}_steps": getattr(args, f"{role}_steps")
           for role in ("predictor", "projector", "interpolator")},
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.lr is not None:
        overrides["lr_min"] = args.lr / 10
    try:
        if args.steps:
            base = base.with_steps(args.steps)
        return dataclasses.replace(base, **overrides)
    except ValueError as exc:
        raise UsageError(str(exc), "trainer train") from None


def cmd_train(args: argparse.Namespace, argv: list[str]) -> int:
    from sinfusion.video import read_clip

    config = _train_config(args)
    if args.end is not None and args.end <= args.start:
        raise UsageError(f"--end ({args.end}) must be greater than --start ({args.start})",
                         "trainer train")
    began = time.monotonic()
    clip = read_clip(args.clip, max_side=config.max_side, size=args.size, start=args.start,
                     end=args.end, stride=args.stride)
    from .training import TrainingInterrupted, train_bundle  # torch: only once the clip is good
    try:
        bundle = train_bundle(clip, args.out, config, roles=args.roles, resume=args.resume,
                              overwrite=args.overwrite, progress=not args.quiet, device=args.device,
                              name=args.name)
    except TrainingInterrupted as stop:
        again = [a for a in argv if a not in ("--resume", "--overwrite")]
        command = "trainer " + " ".join(shlex.quote(a) for a in again) + " --resume"
        return fail(PROG, f"{stop}; resume with: {command}", EXIT_INTERRUPTED)
    m = bundle.manifest
    what = "one image" if m.mode == "image" else counted(m.frame_count, "frame")
    print(f"trainer: wrote {bundle.path} ({', '.join(m.roles)}; {what} of {m.width}x{m.height}) in "
          f"{time.monotonic() - began:.0f}s", file=sys.stderr)
    if "predictor" in m.roles:
        print(f"trainer: {quality_report(m.quality)}", file=sys.stderr)
    if "upsampling" in m.quality:
        from .monitor import upsampling_line

        print(f"trainer: {upsampling_line(m.quality['upsampling'])}", file=sys.stderr)
    if "layout" in m.quality:
        from .layout_check import layout_line

        print(f"trainer: {layout_line(m.quality['layout'])}", file=sys.stderr)
    return 0


def quality_report(record: dict) -> str:
    """The one line a user reads at the end: is this model worth streaming?"""
    from .monitor import summary_line

    line = summary_line(record)
    if "verdict" in record and record["verdict"] != "beats copy":
        line += ("; its next frames are no closer to the clip's than repeating the last frame: "
                 "train longer (--time), or on a clip with more motion")
    return line


# --- sample -------------------------------------------------------------------------------------------

def cmd_sample(args: argparse.Namespace) -> int:
    from sinfusion.bundle import Bundle
    from sinfusion.io.files import write_image, write_video
    from sinfusion.video import contact_sheet

    from .render import RenderRequest, make_denoiser, render, required_roles

    if args.project is not None or args.summary is not None:
        return cmd_project(args)
    for flag, value in (("--strength", args.strength), ("--scales", args.scales)):
        if value is not None:
            raise UsageError(f"{flag} is only used with --project or --summary", "trainer sample")
    out = Path(args.out)
    if out.suffix.lower() not in (".mp4", ".mov", ".mkv", ".webm", ".gif"):
        raise UsageError(f"--out must end in .mp4, .mov, .mkv, .webm or .gif, got {out}",
                         "trainer sample")
    bundle = Bundle.open(args.bundle)
    if args.extrapolate:
        mode, count = "extrapolate", args.extrapolate
    elif args.generate:
        mode, count = "generate", args.generate
    else:
        mode, count = "upsample", 0
    loop = generate_defaults(bundle.manifest.mode) if mode == "generate" else mode
    request = RenderRequest(mode=mode, count=count, factor=args.upsample or 2, start=args.start,
                            k=args.k, seed=args.seed,
                            options=_sampling_options(args, bundle.manifest.correction_steps, loop))
    roles = [r for r in bundle.roles if r in required_roles(mode) or r == "projector"]
    try:
        from .render import check_request

        check_request(bundle, request)
    except ValueError as exc:
        if isinstance(exc, BundleError):
            raise
        raise UsageError(str(exc), "trainer sample") from None
    if args.runtime == "torch":
        from .training import resolve_device

        resolve_device(args.device)
    denoiser = make_denoiser(bundle, args.runtime, args.device, roles)
    began = time.monotonic()
    frames, fps = render(bundle, request, denoiser)
    write_video(out, frames, fps)
    if args.sheet:
        write_image(args.sheet, contact_sheet(frames, columns=args.sheet_columns))
    print(f"trainer: wrote {out} ({counted(len(frames), 'frame')} of {frames.shape[2]}x"
          f"{frames.shape[1]} at {fps:g} fps) in {time.monotonic() - began:.1f}s", file=sys.stderr)
    return 0


DEFAULT_SCALES = [0.9, 0.8, 0.7, 0.6, 0.5]


def cmd_project(args: argparse.Namespace) -> int:
    """--project IMAGE / --summary [IMAGE]: still images in --out (docs/applications.md)."""
    from sinfusion.bundle import Bundle
    from sinfusion.io.files import write_image
    from sinfusion.io.stills import is_still, one_image_problem, sizes_sheet, write_stills
    from sinfusion.sampling import strength_level, summary_sizes

    from .render import make_denoiser, render_projection, still_input

    summary = args.summary is not None
    if not is_still(args.out):
        raise UsageError(f"--out must end in .png, .jpg or .jpeg with "
                         f"{'--summary' if summary else '--project'}, got {args.out}", "trainer sample")
    if args.scales is not None and not summary:
        raise UsageError("--scales is only used with --summary", "trainer sample")
    scales = (args.scales or DEFAULT_SCALES) if summary else None
    problem = one_image_problem(args.out, len(scales) if summary else 1)
    if problem:
        raise UsageError(f"--out {problem}", "trainer sample")
    strength = DEFAULT_STRENGTH if args.strength is None else args.strength
    bundle = Bundle.open(args.bundle)
    if "projector" not in bundle.roles:
        raise BundleError(f"{bundle.path}: {'--summary' if summary else '--project'} needs a "
                          f"trained projector; this bundle has {', '.join(bundle.roles) or 'no roles'}")
    # a projection is its own correction
    options = _sampling_options(args, 0, "summarize" if summary else "project")
    schedule = bundle.sampling()["projector"].schedule
    m = bundle.manifest
    try:
        options.validate(schedule.steps)
        t = strength_level(schedule, strength)
        if summary:
            summary_sizes((m.height, m.width), scales, args.axes)
        image, notice = still_input(bundle, args.project or args.summary, args.start)
    except ValueError as exc:
        if isinstance(exc, (BundleError, VideoError)):
            raise
        raise UsageError(str(exc), "trainer sample") from None
    if notice:
        print(f"trainer: {notice}", file=sys.stderr)
    if args.runtime == "torch":
        from .training import resolve_device

        resolve_device(args.device)
    denoiser = make_denoiser(bundle, args.runtime, args.device, ["projector"])
    began = time.monotonic()
    made = render_projection(bundle, image, strength, options, args.seed, denoiser, scales, args.axes)
    written = list(write_stills(args.out, made))
    if args.sheet:
        write_image(args.sheet, sizes_sheet([image, *made]))
    what = (f"a summary in {len(made)} steps, {made[0].shape[1]}x{made[0].shape[0]} to "
            f"{made[-1].shape[1]}x{made[-1].shape[0]}" if summary
            else f"a projection of {m.width}x{m.height}")
    where = written[0] if len(written) == 1 else f"{written[0]} .. {written[-1].name}"
    print(f"trainer: wrote {where} ({what}; strength {strength:g} = noise level {t} of "
          f"{schedule.steps}) in {time.monotonic() - began:.1f}s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
        if args.command == "train":
            return cmd_train(args, argv)
        if args.command == "plot":
            from .plots import plot_losses

            print(f"trainer: wrote {plot_losses(args.bundle, args.out)}", file=sys.stderr)
            return 0
        return cmd_sample(args)
    except UsageError as exc:
        return usage_failed(PROG, exc)
    except (VideoError, BundleError) as exc:
        return fail(PROG, exc, EXIT_INPUT)
    except KeyboardInterrupt:
        return fail(PROG, "interrupted", EXIT_INTERRUPTED)
    except PermissionError as exc:  # reading is refused as VideoError/BundleError: this is a write
        return fail(PROG, f"{exc.filename or ''}: permission denied", EXIT_OUTPUT)
    except ValueError as exc:
        from .training import TrainerError

        if isinstance(exc, TrainerError):  # the run cannot start with these inputs
            return fail(PROG, exc, EXIT_INPUT)
        raise

if __name__ == "__main__":
    sys.exit(main())
