"""Parity inputs and the PyTorch reference an exported engine is compared with.

The inputs are what the sampling loop really feeds: frames and noise from N(0, 1), noise levels
drawn from the role's schedule with that level's step coefficients (sinfusion.sampling.step_plan),
and frame steps k in [-3, 3] \\ {0}. Random but realistic coefficients matter: with an eps target the
x0 estimate multiplies the network's output by up to 1/sqrt(abar_T) (about 1e3), so parity on
made-up coefficients in [0, 1] would hide errors that sampling shows.
"""

from __future__ import annotations

import numpy as np
import torch

from sinfusion.config import NetworkConfig
from sinfusion.engines import input_specs
from sinfusion.network import DiffusionStep
from sinfusion.sampling import RoleSampling, step_plan

def parity_inputs(config: NetworkConfig, rs: RoleSampling, batch: int, height: int, width: int,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """One step's engine inputs (named as in sinfusion.engines), drawn from a seeded generator."""
    rng = np.random.default_rng(seed)
    plan = step_plan(rs.schedule, rs.target, rs.schedule.steps)  # every level, DDPM coefficients
    picks = rng.integers(0, len(plan), size=batch)
    # The first row always takes the noisiest level, where the coefficients are largest.
    picks[0] = 0
    values = {
        "t": np.array([plan[i][0] for i in picks], np.float32),
        "coef": np.stack([plan[i][1] for i in picks]).astype(np.float32),
        "k": rng.choice(np.array([-3, -2, -1, 1, 2, 3], np.float32), size=batch),
    }
    feed = {}
    for spec in input_specs(config, batch, height, width):
        feed[spec.name] = values.get(spec.name)
        if feed[spec.name] is None:
            feed[spec.name] = rng.standard_normal(spec.shape, dtype=np.float32)
    return feed

@torch.inference_mode()
def torch_step(step: DiffusionStep, feed: dict[str, np.ndarray]) -> np.ndarray:
    """The float32 PyTorch step on named inputs: the reference every engine must match."""
    def tensor(name):
        return None if name not in feed else torch.from_numpy(feed[name])

    out = step(tensor("x"), tensor("cond"), tensor("t"), tensor("k"), tensor("coef"),
               tensor("noise"))
    return out.float().numpy()

def max_abs_error(engine_out: np.ndarray, reference: np.ndarray) -> float:
    """max |engine - reference|; a NaN or Inf anywhere counts as infinitely wrong."""
    diff = np.abs(np.asarray(engine_out, np.float64) - reference)
    return float(diff.max()) if np.all(np.isfinite(diff)) else float("inf")
