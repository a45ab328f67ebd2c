"""The training loop of one role (paper sections 4-5, appendix D), top to bottom.

Per step: set the learning rate, draw a batch of crops (and k for the Predictor), noise it to a random
level t in 1..T (eq. 1), predict the role's target (noise or clean crop), MSE loss, Adam step, EMA
update. Every `checkpoint_every` steps, at the end and on Ctrl-C: checkpoint + served EMA weights.

Ctrl-C does not tear a step in half: a SIGINT (or SIGTERM) handler only raises a flag that the loop
checks between steps (a second signal interrupts at once; the writes are atomic either way). A KeyboardInterrupt
raised by a callback is handled the same way, which is how the tests simulate Ctrl-C.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from sinfusion.bundle import Bundle, RoleEntry, weights_path
from sinfusion.config import default_config
from sinfusion.network import SinFusionNet
from sinfusion.schedule import Schedule

from . import checkpoint
from .compiled import compile_network, make_optimizer
from .crops import ClipCrops, k_limit
from .monitor import NextFrameMonitor
from .presets import TrainConfig
from .preview import write_preview

# callback(role, step, loss) after every step; raising KeyboardInterrupt acts as Ctrl-C.
StepCallback = Callable[[str, int, float], None]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C after writing a checkpoint it can resume from. `doing` names
    what was stopped when it was not a role's steps (the layout check, once the Predictor and the
    Projector are trained)."""

    def __init__(self, bundle_dir: Path, role: str, step: int, total: int,
                 doing: str | None = None) -> None:
        doing = doing or f"{role} at step {step}/{total}"
        super().__init__(f"interrupted {doing}; checkpoint saved in {bundle_dir}")
        self.bundle_dir, self.role, self.step, self.total = bundle_dir, role, step, total


def lr_at(config: TrainConfig, step: int, total: int, fraction: float | None = None) -> float:
    """Learning rate for the step after `step` steps: lr, then lowered to lr_min (see TrainConfig).

    fraction: how far the run is, in [0, 1] (default step / total); a time-budgeted run passes the
    larger of its step and time fractions.
    """
    done = step / max(1, total) if fraction is None else min(1.0, fraction)
    if done < config.lr_decay_at:
        return config.lr
    if config.lr_decay == "step":
        return config.lr_min
    progress = (done - config.lr_decay_at) / max(1e-9, 1.0 - config.lr_decay_at)
    return config.lr_min + 0.5 * (config.lr - config.lr_min) * (1.0 + math.cos(math.pi * progress))


def role_seed(seed: int, role: str) -> int:
    """Independent random streams per role from one user seed."""
    return (seed * 1_000_003 + sum(map(ord, role)) * 7919) % (2**63)


@contextlib.contextmanager
def stop_flag():
    """Turn the first Ctrl-C (SIGINT) or SIGTERM into a flag checked between steps (main thread only).

    A second signal gets the previous handler, so a hung run can still be killed.
    """
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        flag.set()
        for sig, old in previous.items():
            signal.signal(sig, old)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class RoleRun:
    """Everything one role's training holds in memory."""

    role: str
    config: TrainConfig
    schedule: Schedule
    device: torch.device
    net: SinFusionNet
    ema: SinFusionNet
    optimizer: torch.optim.Adam
    generator: torch.Generator
    state: checkpoint.RoleState
    channels_last: bool = False  # NHWC tensors: faster convolutions (CUDA and CPU alike)
    amp_dtype: torch.dtype | None = None  # autocast dtype of the forward pass; None = float32
    time_budget_s: float = 0.0  # this role's share of --time (0 = steps only)

    @property
    def fraction(self) -> float:
        """How far the run is: the larger of its step and time fractions."""
        done = self.state.step / max(1, self.total)
        if self.time_budget_s > 0:
            done = max(done, self.state.elapsed_s / self.time_budget_s)
        return min(1.0, done)

    @property
    def out_of_time(self) -> bool:
        return self.time_budget_s > 0 and self.state.elapsed_s >= self.time_budget_s

    @property
    def target(self) -> str:
        return self.config.target_for(self.role)

    @property
    def total(self) -> int:
        return self.config.steps_for(self.role)


def default_amp_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 autocast on CUDA GPUs that have it (no loss scaling needed); none on the CPU."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def build_run(role: str, config: TrainConfig, schedule: Schedule, device: torch.device,
              settings: dict, *, channels_last: bool = True,
              amp_dtype: torch.dtype | None | str = "auto", compiled: bool | None = None) -> RoleRun:
    """A fresh run: network initialised from the role's seed, EMA copy, Adam, generator.

    channels_last / amp_dtype default to the fast path: channels-last on every device (on a 2-core
    CPU the tiny network's step is 1.3-1.5x as fast as with NCHW tensors: more steps in a time
    budget; docs/benchmarks.md), bfloat16 autocast on CUDA only; tests force either to exercise
    the other path. So does `compiled`: torch.compile'd forward and fused Adam (trainer/compiled.py),
    default on CUDA (on the CPU it compiles for half a minute and is no faster).
    """
    amp_dtype = default_amp_dtype(device) if isinstance(amp_dtype, str) else amp_dtype
    net_config = default_config(role, channels=config.channels, blocks=config.blocks,
                                anchored=config.anchored_for(role))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(role_seed(config.seed, role))
        net = SinFusionNet(net_config)
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    optimizer = make_optimizer(net.parameters(), config.lr, device)
    compiled = device.type == "cuda" if compiled is None else compiled
    if compiled:
        compile_network(net, device)  # after the EMA copy: the EMA stays a plain module
    generator = torch.Generator(device=device)
    generator.manual_seed(role_seed(config.seed + 1, role))
    state = checkpoint.RoleState(step=0, total_steps=config.steps_for(role),
                                 rng_state=checkpoint.encode_rng(generator),
                                 rng_device=str(device.type), settings=settings)
    return RoleRun(role, config, schedule, device, net, ema, optimizer, generator, state,
                   channels_last, amp_dtype)


def resume_run(run: RoleRun, bundle_dir: Path, state: checkpoint.RoleState) -> None:
    """Load a checkpoint into a freshly built run."""
    checkpoint.restore(bundle_dir, run.role, state, run.net, run.ema, run.optimizer)
    if state.rng_device == run.device.type:
        checkpoint.decode_rng(run.generator, state.rng_state)
    else:  # a CPU generator's state does not fit a CUDA one: continue on a fresh stream
        run.generator.manual_seed(role_seed(run.config.seed + 1 + state.step, run.role))
    state.total_steps = run.total
    state.settings = run.state.settings
    run.state = state


def noise_levels(cfg: TrainConfig, role: str, batch: int, steps: int, g: torch.Generator,
                 device: torch.device) -> torch.Tensor:
    """Levels t in 1..steps for a batch: uniform (the paper), except the Projector's share drawn at
    the correction levels 1..correction_steps, where every served frame meets it."""
    t = torch.randint(1, steps + 1, (batch,), generator=g, device=device)
    share, top = cfg.projector_correction_share, min(cfg.correction_steps, steps)
    if role == "projector" and share > 0 and top > 0:
        low = torch.randint(1, top + 1, (batch,), generator=g, device=device)
        t = torch.where(torch.rand(batch, generator=g, device=device) < share, low, t)
    return t


def train_step(run: RoleRun, crops: ClipCrops, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """One optimisation step; returns the loss as a detached scalar on the device (reading it as a
    float waits for the step: on a GPU the loop only does that every few steps)."""
    cfg, role, g, dev = run.config, run.role, run.generator, run.device
    step = run.state.step
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(cfg, step, run.total, run.fraction)

    # 1. Data: clean target crop x0, conditioning frames, k.
    k = None
    if role == "predictor":
        cond, x0, k = crops.pair(cfg.batch_size, k_limit(run.fraction, cfg.k_max, cfg.k_ramp))
    elif role == "interpolator":
        before, after, x0 = crops.triplet(cfg.batch_size)
        cond = torch.cat([before, after], dim=1)
    else:
        cond, x0 = None, crops.single(cfg.batch_size)

    # 2. Forward process (eq. 1) at a random level t in 1..T.
    b = x0.shape[0]
    t = noise_levels(cfg, role, b, run.schedule.steps, g, dev)
    eps = torch.randn(x0.shape, generator=g, device=dev)
    sab, s1mab = tables
    xt = sab[t][:, None, None, None] * x0 + s1mab[t][:, None, None, None] * eps
    inp = xt if cond is None else torch.cat([cond, xt], dim=1)
    if run.channels_last:
        inp = inp.contiguous(memory_format=torch.channels_last)

    # 3. Predict the target (eq. 2 for eps, eq. 3 for x0) and step. Under autocast only the
    # forward runs in bfloat16; the loss, the gradients' accumulation in Adam and the EMA are float32.
    amp = run.amp_dtype
    with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
        out = run.net(inp, t.float(), None if k is None else k.float())
    loss = F.mse_loss(out.float(), eps if run.target == "eps" else x0)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()

    # 4. EMA of the weights (the served model); warm-up so that short runs average few steps.
    decay = min(cfg.ema_decay, (1.0 + step) / (10.0 + step))
    with torch.no_grad():
        for average, param in zip(run.ema.parameters(), run.net.parameters()):
            average.lerp_(param.detach(), 1.0 - decay)
    run.state.step = step + 1
    return loss.detach()


def role_entry(run: RoleRun) -> RoleEntry:
    return RoleEntry(run.ema.config, run.schedule.to_dict(), run.target, weights_path(run.role),
                     trained_steps=run.state.step, settings=run.state.settings)


def save_checkpoint(run: RoleRun, bundle: Bundle) -> None:
    """Resume state, then the served EMA weights and their manifest entry (all atomic)."""
    run.state.rng_state = checkpoint.encode_rng(run.generator)
    checkpoint.save(bundle.path, run.role, run.state, run.net, run.ema, run.optimizer)
    served = {k: v.detach().float().cpu().contiguous().numpy() for k, v in run.ema.state_dict().items()}
    bundle.write_weights(run.role, role_entry(run), served)


def _expected_end(run: RoleRun, steps: int, seconds: float) -> int:
    """The step at which a time-budgeted run will end, at the pace of this session so far."""
    left = max(0.0, run.time_budget_s - run.state.elapsed_s)
    pace = steps / max(seconds, 1e-6)
    return int(min(run.total, run.state.step + pace * left))


def train_role(run: RoleRun, bundle: Bundle, frames: np.ndarray, *, progress: bool = True,
               callback: StepCallback | None = None, monitor: NextFrameMonitor | None = None) -> None:
    """Train one role from run.state.step to its total, checkpointing; Ctrl-C -> TrainingInterrupted.

    Stops early when the role's time budget is spent or the monitor's stop rule fires; the monitor
    (Predictor and Interpolator) measures now and then and its latest score goes into the manifest.
    """
    from tqdm import tqdm

    cfg, total = run.config, run.total
    crops = ClipCrops(frames, cfg.crop_fraction, run.device, run.generator, cfg.hflip,
                      cfg.mirror_labelled)
    tables = tuple(torch.tensor(a, dtype=torch.float32, device=run.device)
                   for a in (run.schedule.sqrt_alpha_bars, run.schedule.sqrt_one_minus_alpha_bars))
    window = max(1, total // 200)  # the stored loss curve keeps ~200 points
    acc, acc_n = 0.0, 0
    bar = tqdm(total=total, initial=run.state.step, desc=f"{run.role:>12}", unit="step",
               file=sys.stderr, disable=not progress, dynamic_ncols=True, leave=True)
    started = time.monotonic() - run.state.elapsed_s
    began, first_step = time.monotonic(), run.state.step
    postfix: dict[str, str] = {}
    run.net.train()
    try:
        with stop_flag() as interrupted:
            while run.state.step < total and not run.out_of_time:
                loss = train_step(run, crops, tables)
                step = run.state.step
                acc, acc_n = acc + loss, acc_n + 1  # summed on the device: no wait per step
                if step % window == 0 or step == total:
                    run.state.losses.append([step, round(float(acc) / acc_n, 6)])
                    acc, acc_n = 0.0, 0
                bar.update(1)
                run.state.elapsed_s = time.monotonic() - started
                if monitor is not None and monitor.due(run.state.elapsed_s):
                    postfix[monitor.label] = monitor.measure(run, bundle)
                    run.state.elapsed_s = time.monotonic() - started
                if step % 10 == 0 or step == total:
                    postfix.update(loss=f"{float(loss):.4f}",
                                   lr=f"{lr_at(cfg, step - 1, total, run.fraction):.1e}")
                    bar.set_postfix(postfix, refresh=False)
                    if run.time_budget_s > 0:  # the bar's end: where the budget will stop it
                        bar.total = _expected_end(run, step - first_step, time.monotonic() - began)
                if callback is not None:
                    callback(run.role, step, float(loss))
                if interrupted.is_set():
                    raise KeyboardInterrupt
                if monitor is not None and monitor.should_stop():
                    break
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                    save_checkpoint(run, bundle)
                if cfg.preview_every and step % cfg.preview_every == 0 and step < total:
                    write_preview(bundle.path, run.role, run.ema, run.schedule, run.target, frames,
                                  step, run.device, cfg.preview_steps)
    except KeyboardInterrupt:
        bar.close()
        save_checkpoint(run, bundle)
        raise TrainingInterrupted(bundle.path, run.role, run.state.step, total) from None
    run.state.finished = True
    if run.state.step < total:  # ended by its time budget or the early stop: that is 100%
        bar.total = run.state.step
    if monitor is not None:
        monitor.finish(run, bundle)
        bar.set_postfix(postfix | {monitor.label: monitor.latest_text()}, refresh=True)
    bar.close()
    save_checkpoint(run, bundle)
    write_preview(bundle.path, run.role, run.ema, run.schedule, run.target, frames, run.state.step,
                  run.device, cfg.preview_steps)
