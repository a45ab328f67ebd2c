"""`train_bundle`: one call from a clip to a trained bundle (the library API the CLI wraps).

Video mode (two or more frames): the roles of paper section 5, each on the cosine schedule.
Single-image mode (one image or a one-frame clip): only the Projector, which is then the single-image
DDPM of paper section 4, on the linear schedule (appendix D).

The bundle is written through sinfusion.bundle: frames and manifest first, then per role a checkpoint
and the served EMA weights every `checkpoint_every` steps and at the end. `training/run.json` records
the config of the run so that `--resume` can continue with the same settings.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sinfusion.bundle import MANIFEST, Bundle, BundleError, Manifest, atomic_write_json
from sinfusion.config import ROLES
from sinfusion.sampling import SamplingOptions
from sinfusion.schedule import make_schedule
from sinfusion.video import DEFAULT_FPS, Clip, read_clip

from . import checkpoint
from .crops import crop_size
from .layout_check import check_layout_hold, needs_check
from .loop import (StepCallback, TrainingInterrupted, build_run, default_amp_dtype, resume_run,
                   train_role)
from .monitor import (InBetweenMonitor, NextFrameMonitor, holdout_count, holdout_pairs,
                      holdout_triplets)
from .presets import RUN_FILE, TrainConfig, get_preset, load_run_config, load_run_record

# Training order: the Projector first, so the Predictor's held-out score can use correction.
TRAIN_ORDER = ("projector", "predictor", "interpolator")

__all__ = ["TrainerError", "TrainingInterrupted", "train_bundle", "load_run_config", "resolve_roles"]


class TrainerError(ValueError):
    """A request the trainer cannot honour (bad roles, bundle mismatch); the message says why."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str | None) -> torch.device:
    """A torch device from a user's string (None: CUDA when present), or a one-line TrainerError."""
    try:
        dev = torch.device(name or default_device())
    except RuntimeError:
        raise TrainerError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise TrainerError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainerError(f"device {name!r} requested but no CUDA GPU is available")
    return dev


def frames_sha256(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()


def resolve_roles(roles: Sequence[str] | None, mode: str, frame_count: int) -> list[str]:
    """The roles to train, in paper order; explicit requests the clip cannot support are errors."""
    if mode == "image":
        if roles is not None and set(roles) != {"projector"}:
            raise TrainerError("a single image trains only the projector (single-image DDPM); "
                               f"asked for {', '.join(roles)}")
        return ["projector"]
    need = {"predictor": 2, "projector": 1, "interpolator": 3}
    if roles is None:
        return [r for r in ROLES if frame_count >= need[r]]
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise TrainerError(f"unknown role {', '.join(unknown) or '(none)'}; "
                           f"valid roles: {', '.join(ROLES)}")
    for r in roles:
        if frame_count < need[r]:
            raise TrainerError(f"the {r} needs a clip of at least {need[r]} frames, this one has "
                               f"{frame_count}")
    return [r for r in ROLES if r in roles]


def _as_clip(clip: Clip | np.ndarray | str | os.PathLike, config: TrainConfig) -> Clip:
    if isinstance(clip, Clip):
        return clip
    if isinstance(clip, np.ndarray):
        if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
            raise TrainerError(f"clip must be uint8 (N, H, W, 3), got {clip.dtype} {clip.shape}")
        return Clip(clip, DEFAULT_FPS, "array", {"kind": "array"})
    return read_clip(clip, max_side=config.max_side)


def _open_for_resume(out: Path, frames: np.ndarray) -> Bundle:
    if not (out / MANIFEST).is_file():
        raise TrainerError(f"{out}: nothing to resume (no {MANIFEST}); drop --resume to start a new run")
    bundle = Bundle.open(out)
    stored = bundle.frames()
    if stored.shape != frames.shape or frames_sha256(stored) != frames_sha256(frames):
        raise TrainerError(f"{out}: the bundle was trained on other frames ({stored.shape[0]} frames of "
                           f"{stored.shape[2]}x{stored.shape[1]}); resume with the same clip and options")
    return bundle


def _create(out: Path, clip: Clip, mode: str, name: str | None, overwrite: bool,
            config: TrainConfig) -> Bundle:
    if (out / MANIFEST).is_file():
        if not overwrite:
            raise TrainerError(f"{out}: already holds a bundle; pass --resume to continue it or "
                               f"--overwrite to start over")
        for sub in ("weights", "training", "previews"):  # only the trainer's own sub-folders
            shutil.rmtree(out / sub, ignore_errors=True)
        # manifest.json stays until Bundle.create replaces it: it is what marks the folder as ours
    source = dict(clip.source)
    source["frames_sha256"] = frames_sha256(clip.frames)
    manifest = Manifest(name=name or Path(str(clip.source.get("path", out.name))).stem or out.name,
                        mode=mode, width=clip.width, height=clip.height, fps=float(clip.fps),
                        frame_count=int(clip.frames.shape[0]), source=source,
                        correction_steps=config.correction_steps,
                        correction_weight=config.correction_weight,
                        correction_passes=config.correction_passes,
                        predictor_margin=config.predictor_margin,
                        coarse_correction_level=config.coarse_correction_level,
                        coarse_correction_weight=config.coarse_correction_weight,
                        # one image makes no streams to hold
                        layout_pull=config.layout_pull if mode == "video" else 0.0,
                        layout_sigma=config.layout_sigma,
                        layout_motion=config.layout_motion,
                        layout_window=config.layout_window)
    return Bundle.create(out, manifest, clip.frames)


def _monitor_for(role: str, given: NextFrameMonitor | None, frames: np.ndarray, held: int,
                 config: TrainConfig, correction: int):
    """What measures a role while it trains: `given` for the Predictor, else the held-out monitor
    of the clip's tail (none without held-out frames)."""
    tail = (len(frames) - held, len(frames))
    if role == "predictor":
        if given is not None or not held:
            return given
        return NextFrameMonitor(
            frames, holdout_pairs(len(frames), held),
            options=SamplingOptions.chosen(default_correction=correction, loop="extrapolate"),
            eval_every_s=config.eval_every_s, stop_margin_db=config.stop_margin_db, holdout=tail)
    triplets = holdout_triplets(len(frames), held) if role == "interpolator" else []
    if not triplets:
        return None
    return InBetweenMonitor(
        frames, [(i, i + 2) for i in triplets],
        options=SamplingOptions.chosen(default_correction=correction, loop="upsample"),
        eval_every_s=config.eval_every_s, holdout=tail)


def train_bundle(
    clip: Clip | np.ndarray | str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TrainConfig | str = "cpu",
    *,
    roles: Sequence[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    device: str | None = None,
    name: str | None = None,
    callback: StepCallback | None = None,
    monitor: NextFrameMonitor | None = None,
) -> Bundle:
    """Train the roles of a clip into the bundle folder `out_dir` and return the bundle.

    clip: a sinfusion.video.Clip, uint8 frames (N, H, W, 3) or a path read with the config's max_side.
    config: a TrainConfig or a preset name ("cpu", "tiny", "paper").
    monitor: measures the Predictor instead of the built-in held-out monitor (its pairs index the
        clip given here; quality.nextframe's protocol passes its own split).
    resume: continue the checkpoints in out_dir (roles already finished are skipped; roles=None
        means the roles the interrupted run was training).
    Raises TrainerError / BundleError / VideoError (one-line messages) for bad requests and
    TrainingInterrupted (a KeyboardInterrupt) after saving a checkpoint on Ctrl-C.
    """
    if isinstance(config, str):
        config = get_preset(config)
    clip = _as_clip(clip, config)
    frames = clip.frames
    mode = "image" if clip.kind == "image" or frames.shape[0] == 1 else "video"
    out = Path(out_dir)
    if resume and roles is None:  # continue the roles the interrupted run was asked for
        record = load_run_record(out)
        roles = record["roles"] if record and record["roles"] else None
    chosen = resolve_roles(roles, mode, frames.shape[0])
    dev = resolve_device(device)
    try:
        held = holdout_count(len(frames), config.holdout) if mode == "video" else 0
    except ValueError as exc:
        raise TrainerError(str(exc)) from None

    bundle = _open_for_resume(out, frames) if resume else _create(out, clip, mode, name, overwrite,
                                                                  config)
    atomic_write_json(out / checkpoint.TRAINING_DIR / RUN_FILE,
                      {"config": config.to_dict(), "roles": chosen, "mode": mode})
    schedule = make_schedule("linear" if mode == "image" else "cosine", config.schedule_steps)
    crop = crop_size(clip.height, clip.width, config.crop_fraction)
    train_frames = frames[:len(frames) - held]

    # The Projector first, so that the Predictor's held-out score uses the served sampler
    # (Predictor -> Projector correction); the roles are independent otherwise. Once both are
    # trained the layout hold is measured (trainer/layout_check.py), on top of the roles' time: taken
    # from the Interpolator's share it cost tornado's in-between frames their verdict.
    order = sorted(chosen, key=TRAIN_ORDER.index)
    checked_after = [r for r in order if r in ("predictor", "projector")][-1:]
    for role in order:
        amp = default_amp_dtype(dev)
        settings = dict(config.to_dict(), steps=config.steps_for(role), crop=[crop[0], crop[1]],
                        device=dev.type, mixed_precision=str(amp).replace("torch.", "") if amp else "no",
                        holdout_frames=held)
        run = build_run(role, config, schedule, dev, settings, amp_dtype=amp)
        run.time_budget_s = config.time_for(role, chosen)
        state = checkpoint.load_state(out, role) if resume else None
        if state is not None:
            resume_run(run, out, state)
        finished_before = (state is not None and role in bundle.manifest.roles
                           and (run.state.step >= run.total or run.out_of_time))
        if not finished_before:
            train_role(run, bundle, train_frames, progress=progress, callback=callback,
                       monitor=_monitor_for(role, monitor, frames, held, config,
                                            bundle.manifest.correction_steps))
        if role in checked_after and needs_check(bundle) and (
                not finished_before or "layout" not in bundle.manifest.quality):
            try:
                check_layout_hold(bundle, frames=config.layout_check_frames, announce=progress)
            except KeyboardInterrupt:  # both roles are saved: --resume measures again, then goes on
                raise TrainingInterrupted(bundle.path, role, run.state.step, run.total,
                                          doing="while measuring the layout hold (the Predictor "
                                                "and the Projector are trained)") from None
    return bundle
