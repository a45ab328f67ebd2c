"""Resume state of one role: training/<role>.safetensors + training/<role>.json, written atomically.

The safetensors file holds every tensor a run needs to continue bit for bit: the raw weights
("model/..."), their EMA ("ema/..."), and Adam's moments ("adam_m/...", "adam_v/..."). The JSON file
holds the rest: the step counter, the random generator's state (base64 of torch's byte state), the
settings, and the loss curve so far. The JSON is written second and names the step the tensors are
at (the tensors carry it in their metadata too), so a crash between the two writes is detected
instead of silently resuming from mismatched halves.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sinfusion.bundle import BundleError, load_tensors, save_tensors
from sinfusion.io.atomic import atomic_write_json

TRAINING_DIR = "training"


def tensors_path(bundle_dir: Path, role: str) -> Path:
    return Path(bundle_dir) / TRAINING_DIR / f"{role}.safetensors"


def state_path(bundle_dir: Path, role: str) -> Path:
    return Path(bundle_dir) / TRAINING_DIR / f"{role}.json"


@dataclass
class RoleState:
    """What a checkpoint restores, besides the tensors."""

    step: int
    total_steps: int
    rng_state: str  # base64 of torch.Generator.get_state()
    rng_device: str
    settings: dict
    losses: list = field(default_factory=list)  # [[step, mean loss over the last window], ...]
    elapsed_s: float = 0.0
    finished: bool = False  # ended normally (all steps, its time budget, or the early stop)

    def to_dict(self, role: str) -> dict:
        return {"role": role, "step": self.step, "total_steps": self.total_steps,
                "rng": {"device": self.rng_device, "state": self.rng_state},
                "settings": self.settings, "elapsed_s": round(self.elapsed_s, 3),
                "finished": self.finished,
                "losses": self.losses}


def encode_rng(generator: torch.Generator) -> str:
    return base64.b64encode(generator.get_state().numpy().tobytes()).decode("ascii")


def decode_rng(generator: torch.Generator, state: str) -> None:
    raw = np.frombuffer(base64.b64decode(state), dtype=np.uint8).copy()
    generator.set_state(torch.from_numpy(raw))


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy() if t.is_floating_point() else t.detach().cpu().numpy()


def save(bundle_dir: Path, role: str, state: RoleState, net: torch.nn.Module,
         ema: torch.nn.Module, optimizer: torch.optim.Adam) -> None:
    """Write the role's checkpoint: tensors first, then the JSON that commits them."""
    tensors: dict[str, np.ndarray] = {}
    for name, value in net.state_dict().items():
        tensors[f"model/{name}"] = _numpy(value)
    for name, value in ema.state_dict().items():
        tensors[f"ema/{name}"] = _numpy(value)
    names = {id(p): n for n, p in net.named_parameters()}
    adam_step = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if not st:
                continue
            tensors[f"adam_m/{names[id(p)]}"] = _numpy(st["exp_avg"])
            tensors[f"adam_v/{names[id(p)]}"] = _numpy(st["exp_avg_sq"])
            adam_step = int(st["step"])
    save_tensors(tensors_path(bundle_dir, role), tensors,
                 {"role": role, "step": str(state.step), "adam_step": str(adam_step)})
    atomic_write_json(state_path(bundle_dir, role), state.to_dict(role))


def load_state(bundle_dir: Path, role: str) -> RoleState | None:
    """The role's checkpoint state, or None when it has none."""
    path = state_path(bundle_dir, role)
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        return RoleState(step=int(d["step"]), total_steps=int(d["total_steps"]),
                         rng_state=d["rng"]["state"], rng_device=d["rng"]["device"],
                         settings=dict(d["settings"]), losses=list(d.get("losses", [])),
                         elapsed_s=float(d.get("elapsed_s", 0.0)),
                         finished=bool(d.get("finished", False)))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: damaged checkpoint ({exc.__class__.__name__}: {exc})") from None


def restore(bundle_dir: Path, role: str, state: RoleState, net: torch.nn.Module,
            ema: torch.nn.Module, optimizer: torch.optim.Adam) -> None:
    """Load the tensors of a checkpoint into a freshly built net, EMA and optimizer."""
    from safetensors import safe_open

    path = tensors_path(bundle_dir, role)
    tensors = load_tensors(path)
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
    if int(meta.get("step", -1)) != state.step:
        raise BundleError(f"{path}: holds step {meta.get('step')} but {state_path(bundle_dir, role).name} "
                          f"says {state.step}; the checkpoint was interrupted mid-write, delete "
                          f"{TRAINING_DIR}/{role}.* to restart this role")
    device = next(net.parameters()).device

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: torch.from_numpy(v).to(device)
                for k, v in tensors.items() if k.startswith(prefix)}

    try:
        net.load_state_dict(part("model/"))
        ema.load_state_dict(part("ema/"))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise BundleError(f"{path}: does not fit this network ({first})") from None
    moments_m, moments_v = part("adam_m/"), part("adam_v/")
    adam_step = float(meta.get("adam_step", 0))
    for name, p in net.named_parameters():
        if name in moments_m:
            # empty_like keeps the parameter's memory format (channels-last on CUDA)
            optimizer.state[p] = {"step": torch.tensor(adam_step),
                                  "exp_avg": torch.empty_like(p).copy_(moments_m[name]),
                                  "exp_avg_sq": torch.empty_like(p).copy_(moments_v[name])}
