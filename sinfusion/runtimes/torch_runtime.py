"""The PyTorch runtime: runs sinfusion.network.DiffusionStep eagerly, on the CPU or CUDA."""

from __future__ import annotations

import numpy as np
import torch

from ..bundle import Bundle
from ..network import DiffusionStep, SinFusionNet


def load_network(bundle: Bundle, role: str) -> SinFusionNet:
    """Rebuild a role's network from the manifest and load its served (EMA) weights."""
    net = SinFusionNet(bundle.role(role).network)
    state = {k: torch.from_numpy(np.array(v)) for k, v in bundle.weights(role).items()}
    net.load_state_dict(state)
    return net.eval()


class TorchDenoiser:
    """Denoiser over a bundle's roles with PyTorch. Fixed shapes are not required."""

    name = "torch"

    def __init__(self, bundle: Bundle, device: str = "cpu", roles: list[str] | None = None) -> None:
        self.device = torch.device(device)
        self.steps = {
            role: DiffusionStep(load_network(bundle, role)).to(self.device)
            for role in (roles or bundle.roles)
        }

    @classmethod
    def from_networks(cls, networks: dict[str, SinFusionNet], device: str = "cpu") -> TorchDenoiser:
        """A runtime over in-memory networks (the trainer's previews, tests)."""
        self = cls.__new__(cls)
        self.device = torch.device(device)
        self.steps = {r: DiffusionStep(n).to(self.device).eval() for r, n in networks.items()}
        return self

    @torch.inference_mode()
    def __call__(self, role, x, cond, t, k, coef, noise) -> np.ndarray:
        step = self.steps.get(role)
        if step is None:
            raise KeyError(f"no {role} loaded in this runtime (has: {', '.join(self.steps)})")
        dev = self.device

        def tensor(a):
            if a is None:
                return None
            if isinstance(a, torch.Tensor):  # a device-resident loop's frame: not through numpy
                return a.to(dev)
            return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

        k_in = tensor(k) if step.net.config.use_k else None
        out = step(tensor(x), tensor(cond), tensor(t), k_in, tensor(coef), tensor(noise))
        return out.float().cpu().numpy()
