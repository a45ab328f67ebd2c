"""Training configurations: one dataclass holds every knob, one subclass per preset.

`TrainConfig` defaults follow the paper (appendix D): Adam at 2e-4 dropped to 2e-5, batch 1 of ~95%
crops, T=50, cosine schedule for video roles and linear for a single image, Predictor on noise, the
Projector and Interpolator on the clean frame. A preset only changes sizes and step counts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from sinfusion.config import ROLES, TARGETS
from sinfusion.sampling import serving_problems

LR_DECAYS = ("step", "cosine")
RUN_FILE = "run.json"  # training/run.json in a bundle: the config of its training run
# How a wall-clock budget (--time) is shared: every streamed frame is the Predictor's, mended by the
# Projector's correction, and a correcting Projector needs as much training as the Predictor
# (docs/training.md, "Projector correction").
TIME_SHARES = {"predictor": 0.4, "projector": 0.4, "interpolator": 0.2}
# The layout check's shortest streams: its drift ratio then compares 10 early frames with 10 late.
MIN_CHECK_FRAMES = 40


@dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes a training run. Recorded in the manifest (RoleEntry.settings)."""

    # Network size (paper: 16 blocks of 64 channels; receptive field ~ 6 px per block).
    channels: int = 64
    blocks: int = 16
    # Steps per role (paper D.1: 200k / 100k / 50k).
    predictor_steps: int = 200_000
    projector_steps: int = 100_000
    interpolator_steps: int = 50_000
    # Prediction targets (paper section 5 "Losses"): what each network outputs.
    predictor_target: str = "eps"
    projector_target: str = "x0"
    interpolator_target: str = "x0"
    # Diffusion: T levels; cosine for video roles, linear for single-image mode (paper D).
    schedule_steps: int = 50
    # Data: crops of ~95% of the frame (paper 4, A.1); batch 1 in the paper (each crop holds many
    # "patches" for a fully convolutional net).
    batch_size: int = 1
    crop_fraction: float = 0.95
    # Mirror half the samples left-right (trainer/crops.py); the paper does not. With
    # mirror_labelled, a mirrored Predictor sample carries its own frame-step code (crops.MIRRORED_K):
    # mirroring reverses every horizontal motion, and an unlabelled Predictor can no longer tell
    # which way a round blob or a wave travels; served frames always use the unmirrored code.
    hflip: bool = False
    mirror_labelled: bool = False
    # Predictor's frame step curriculum: |k| starts at 1 and reaches k_max over the first
    # k_ramp fraction of its steps; both signs (negative k = predict the previous frame).
    k_max: int = 3
    k_ramp: float = 0.5
    # Optimiser: Adam at lr, lowered to lr_min ("step": after lr_decay_at of the steps, as the
    # paper's drop at 100k of 200k; "cosine": smoothly from lr_decay_at to the end).
    lr: float = 2e-4
    lr_min: float = 2e-5
    lr_decay: str = "step"
    lr_decay_at: float = 0.5
    # EMA of the weights, the served weights. Warm-up (1+s)/(10+s) keeps short runs useful.
    ema_decay: float = 0.999
    # Predictor and Interpolator with x0 targets predict the change from their conditioning frames
    # (sinfusion.config.NetworkConfig.anchored): an untrained model starts at copy / blend.
    anchored: bool = False
    # Wall-clock budget of the whole run in seconds (0 = steps only), shared by the roles as
    # TIME_SHARES; the learning-rate schedule follows whichever of steps and time runs out first.
    time_budget_s: float = 0.0
    # Held-out frames at the clip's end for the trainer's own next-frame report (-1 = automatic,
    # 0 = off; trainer/monitor.py), how often it measures (seconds of Predictor training), and the
    # early stop: beats copy by stop_margin_db and has plateaued (0 = never stop early).
    holdout: int = -1
    eval_every_s: float = 60.0
    stop_margin_db: float = 0.5
    # The bundle's serving default of the Projector's correction level T_corr (paper appendix D: 3;
    # 0 = no correction): what the server, `trainer sample` and the held-out report use unless asked.
    correction_steps: int = 3
    # How much of the Projector's change a served correction keeps (1 = all, the paper's): the
    # bundle's correction_weight (sinfusion.sampling.correct).
    correction_weight: float = 1.0
    # How many times a served frame is corrected, each on the last one's result (1 = the paper's).
    correction_passes: int = 1
    # Pixels of mirrored frame the served Predictor works with past every edge (0 = none, the paper's):
    # the bundle's predictor_margin (sinfusion.sampling.predict_frame).
    predictor_margin: int = 0
    # A coarse correction before those at correction_steps (0 = none, the paper's): its level and
    # the share of its change a frame keeps (the bundle's; sinfusion.sampling.correct).
    coarse_correction_level: int = 0
    coarse_correction_weight: float = 1.0
    # The share of the way each corrected frame of a stream moves to a held layout (a frame blurred
    # by layout_sigma px at the training frame size; 0 = none, the paper's): its start frame's
    # (layout_window 0) or at each pixel the clip frame's that looks most like it within
    # layout_window px. None where the layout's standard deviation over the clip reaches
    # layout_motion (0: everywhere alike). The bundle's (sinfusion.sampling.correct).
    layout_pull: float = 0.0
    layout_sigma: float = 0.0
    layout_motion: float = 0.0
    layout_window: int = 0
    # Frames per stream of the trainer's layout check (trainer/layout_check.py): the drift goal's
    # 300 by default; fewer is quicker and less sure (a stream's last quarter is its late frames).
    layout_check_frames: int = 300
    # Share of the Projector's samples drawn at the correction levels 1..correction_steps (its job in
    # every predicted frame), the rest at any level 1..T (Generate draws its first frame from noise).
    # The paper draws every level alike (0).
    projector_correction_share: float = 0.0
    # Bookkeeping: checkpoint and preview intervals in steps (0 = only at the end).
    checkpoint_every: int = 1000
    preview_every: int = 5000
    preview_steps: int = 0  # denoising steps of a preview (0 = all T, ancestral; else DDIM)
    # Reading the clip: cap of the long side (0 = keep), as sinfusion.video.read_clip.
    max_side: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.channels >= 4, f"channels must be >= 4, got {self.channels}"),
            (self.blocks >= 2 and self.blocks % 2 == 0,
             f"blocks must be an even number >= 2, got {self.blocks}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (0.1 <= self.crop_fraction <= 1.0,
             f"crop_fraction must be in [0.1, 1], got {self.crop_fraction}"),
            (1 <= self.k_max <= 3, f"k_max must be in [1, 3], got {self.k_max}"),
            (0.0 <= self.k_ramp <= 1.0, f"k_ramp must be in [0, 1], got {self.k_ramp}"),
            (self.lr > 0 and 0 <= self.lr_min <= self.lr,
             f"need lr > 0 and 0 <= lr_min <= lr, got lr={self.lr} lr_min={self.lr_min}"),
            (self.lr_decay in LR_DECAYS,
             f"lr_decay must be one of {', '.join(LR_DECAYS)}, got {self.lr_decay!r}"),
            (0.0 <= self.lr_decay_at <= 1.0, f"lr_decay_at must be in [0, 1], got {self.lr_decay_at}"),
            (0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {self.ema_decay}"),
            (1 <= self.schedule_steps <= 1000,
             f"schedule_steps must be in [1, 1000], got {self.schedule_steps}"),
            (self.checkpoint_every >= 0 and self.preview_every >= 0,
             "checkpoint_every and preview_every must be >= 0"),
            (0 <= self.preview_steps <= self.schedule_steps,
             f"preview_steps must be in [0, {self.schedule_steps}], got {self.preview_steps}"),
            (self.max_side >= 0, f"max_side must be >= 0, got {self.max_side}"),
            (0 <= self.correction_steps <= self.schedule_steps,
             f"correction_steps must be in [0, {self.schedule_steps}], got {self.correction_steps}"),
            *((False, problem) for problem in serving_problems(
                self.correction_weight, self.correction_passes, self.predictor_margin,
                self.coarse_correction_level, self.coarse_correction_weight, self.schedule_steps,
                self.layout_pull, self.layout_sigma, self.layout_motion, self.layout_window)),
            (0.0 <= self.projector_correction_share <= 1.0,
             f"projector_correction_share must be in [0, 1], got {self.projector_correction_share}"),
            (self.time_budget_s >= 0, f"time budget must be >= 0 s, got {self.time_budget_s}"),
            (self.holdout >= -1, f"holdout must be -1 (auto), 0 (off) or a frame count, got "
                                 f"{self.holdout}"),
            (self.eval_every_s > 0, f"eval_every_s must be > 0, got {self.eval_every_s}"),
            (self.stop_margin_db >= 0, f"stop_margin_db must be >= 0, got {self.stop_margin_db}"),
            (self.layout_check_frames >= MIN_CHECK_FRAMES,
             f"layout_check_frames must be >= {MIN_CHECK_FRAMES}, got {self.layout_check_frames}"),
        ]
        for role in ROLES:
            steps = self.steps_for(role)
            checks.append((steps >= 1, f"{role}_steps must be >= 1, got {steps}"))
            target = self.target_for(role)
            checks.append((target in TARGETS,
                           f"{role}_target must be one of {', '.join(TARGETS)}, got {target!r}"))
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def steps_for(self, role: str) -> int:
        return int(getattr(self, f"{role}_steps"))

    def target_for(self, role: str) -> str:
        return str(getattr(self, f"{role}_target"))

    def anchored_for(self, role: str) -> bool:
        """Whether this role's network is anchored: asked for, has conditioning frames, x0 target."""
        return self.anchored and role != "projector" and self.target_for(role) == "x0"

    def time_for(self, role: str, roles: Sequence[str]) -> float:
        """Seconds of the wall-clock budget `role` may use when `roles` are trained (0 = no limit)."""
        return self.time_budget_s * TIME_SHARES[role] / sum(TIME_SHARES[r] for r in roles)

    def with_steps(self, steps: int) -> TrainConfig:
        """The same config with every role trained for `steps` steps."""
        return replace(self, **{f"{r}_steps": steps for r in ROLES})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class TinyPreset(TrainConfig):
    """All three roles on the sample clip (96x64) in about two minutes on a 2-core CPU.

    Measured (docs/training.md): 4 blocks of 16 channels (receptive field 29 px) at batch 2. Small,
    so the results are blurry but recognisably the clip; it exists for the demo and the tests.
    """

    channels: int = 16
    blocks: int = 4
    predictor_steps: int = 500
    projector_steps: int = 300
    interpolator_steps: int = 200
    # Targets swapped against the paper's, for short training (measured in docs/training.md):
    # - the Predictor predicts the clean frame: it can copy from its conditioning frame, and in a
    #   few hundred steps its x0 form errs 3x less than the eps form, whose noise compounds;
    # - the Projector predicts noise: a tiny x0 network does not learn the near-identity that
    #   correction (T_corr = 3) needs and blurs every frame it corrects; eps has it built in.
    predictor_target: str = "x0"
    projector_target: str = "eps"
    # Frame steps k = +-1 only: a network this small spends what it learns of k = 2, 3 on the k = 1
    # that streams use (-0.9 dB on tornado, -0.6 on ants), and its k = 1 model already beats copy at
    # k = 2 and 3 (docs/training.md, "Frame steps").
    k_max: int = 1
    anchored: bool = True  # start at copy / blend: measured in docs/training.md
    hflip: bool = True  # mirrored samples: stops the Predictor memorising its frames (measured there)
    mirror_labelled: bool = True  # ... told apart from the real ones: motion keeps its direction
    # Served without correction: a Projector of this size adds more error than it removes (-2 dB at
    # T_corr 1, -4 dB at 3 on held-out tornado pairs; docs/training.md). --correction-steps brings it.
    correction_steps: int = 0
    batch_size: int = 2
    lr: float = 2e-3  # a tiny net on few steps tolerates (and needs) a larger step size
    lr_min: float = 2e-4
    lr_decay: str = "cosine"
    lr_decay_at: float = 0.0
    ema_decay: float = 0.99
    checkpoint_every: int = 250
    preview_every: int = 250
    max_side: int = 128  # a larger clip (tornado: 256x144) is trained at 128x72


@dataclass(frozen=True)
class CpuPreset(TinyPreset):
    """The CPU default: a model that beats copying the frame, in a 15-minute budget on 2 cores.

    The tiny network and recipe, anchored (the Predictor and Interpolator predict the change from
    their conditioning frames), trained for time rather than steps: of 15 minutes the Predictor and
    the Projector get 6 each, the Interpolator 3; the Predictor stops early once it beats copy on the
    held-out frames and stops improving. Frames are served with the Predictor working with an 8 px
    margin of mirrored frame, then 15% of a coarse correction by the Projector at level 3 (with the
    same margin) and half of one at level 1.
    Measured on four real clips in docs/training.md.
    """

    anchored: bool = True
    # Served with correction at the lowest level, by a Projector trained half the time at that level:
    # it keeps a 300-frame stream's detail where no correction lets it drain (docs/training.md,
    # "Projector correction"). A frame keeps half of the correction's change: the correction's noise
    # costs next-frame PSNR as the weight squared, its pull against drift falls only linearly; and
    # before it, 15% of the way to the Projector's one-step estimate from level 3, made with the
    # Predictor's margin, pulls larger structures back to the clip's: 300-frame drift falls by 29%
    # on tornado, 32% on ants, 4-8% on boat_race and fish, with a better next frame, against two
    # passes at level 1 (docs/training.md, "A coarse correction first"), for as many Projector calls.
    correction_steps: int = 1
    correction_weight: float = 0.5
    correction_passes: int = 1
    coarse_correction_level: int = 3
    coarse_correction_weight: float = 0.15
    # The Predictor's guesses of what enters at the frame's edges are made outside it and dropped:
    # 300-frame drift falls by 40% on tornado and 30% on ants, holds on boat_race and fish
    # (docs/training.md, "A margin for the Predictor"), for about a fifth of a served frame's speed.
    predictor_margin: int = 8
    # Each frame of a stream moves 30% of the way, at every pixel, to a picture (blurred by 0.6 px:
    # the fine detail held too) of its start frame or of the clip frame that looks most like it
    # within 3 px there, if the trainer measures that its streams drift less so
    # (trainer/layout_check.py): tornado keeps its funnel for 300 frames and drifts 1.1 from its
    # last frame and 1.6-1.7 from frame 0, where held to its start frame's picture alone (where
    # the clip holds still) it drifted 1.4-1.7 and 1.8-2.2; next frames beat copy by 0.1-0.3 dB
    # more on three clips, 0.45 less on fish (docs/training.md, "Holding to the clip", "The
    # start frame among the pictures").
    layout_pull: float = 0.3
    layout_sigma: float = 0.6
    layout_motion: float = 0.0
    layout_window: int = 3
    projector_correction_share: float = 0.5
    time_budget_s: float = 900.0
    predictor_steps: int = 200_000  # caps: the time budget ends each role first on a CPU
    projector_steps: int = 100_000
    interpolator_steps: int = 50_000
    checkpoint_every: int = 1000
    preview_every: int = 2000


@dataclass(frozen=True)
class PaperPreset(TrainConfig):
    """The paper's configuration (appendix D): 16 blocks, 64 channels, 200k/100k/50k steps."""


PRESETS: dict[str, type[TrainConfig]] = {"cpu": CpuPreset, "tiny": TinyPreset,
                                         "paper": PaperPreset}
DEFAULT_PRESET = "cpu"


def get_preset(name: str, **overrides) -> TrainConfig:
    """The named preset with some fields replaced; unknown names list the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return replace(PRESETS[name](), **overrides)


def load_run_record(out_dir: str | os.PathLike) -> dict | None:
    """training/run.json of a bundle ({"config": ..., "roles": [...], "mode": ...}) or None."""
    from sinfusion.bundle import BundleError

    path = Path(out_dir) / "training" / RUN_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        record["config"] = TrainConfig.from_dict(record["config"])
        record["roles"] = [str(r) for r in record.get("roles", [])]
        return record
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: damaged run record ({exc})") from None


def load_run_config(out_dir: str | os.PathLike) -> TrainConfig | None:
    """The config a bundle was trained with, or None when it has no run record."""
    record = load_run_record(out_dir)
    return None if record is None else record["config"]
