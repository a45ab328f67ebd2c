"""Noise schedules and their coefficient tables (paper section 3, appendix D).

Index convention: arrays have T+1 entries and index t is noise level t, with t=0 the clean image
(alpha_bar[0] = 1). Training draws t uniformly from 1..T. Tables are computed in float64 once and kept
as float64 here; the sampling loop casts the per-step coefficients it hands to a runtime to float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCHEDULES = ("cosine", "linear")


@dataclass(frozen=True)
class Schedule:
    kind: str
    steps: int  # T
    betas: np.ndarray  # (T+1,), betas[0] = 0
    alphas: np.ndarray  # 1 - betas
    alpha_bars: np.ndarray  # cumulative products, alpha_bars[0] = 1

    @property
    def sqrt_alpha_bars(self) -> np.ndarray:
        return np.sqrt(self.alpha_bars)

    @property
    def sqrt_one_minus_alpha_bars(self) -> np.ndarray:
        return np.sqrt(1.0 - self.alpha_bars)

    def posterior_variance(self) -> np.ndarray:
        """beta_tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t); entry 0 is 0."""
        var = np.zeros(self.steps + 1)
        ab = self.alpha_bars
        var[1:] = self.betas[1:] * (1.0 - ab[:-1]) / (1.0 - ab[1:])
        return var

    def to_dict(self) -> dict:
        return {"kind": self.kind, "steps": self.steps}


def _from_betas(kind: str, betas: np.ndarray) -> Schedule:
    betas = np.concatenate([[0.0], np.asarray(betas, dtype=np.float64)])
    alphas = 1.0 - betas
    return Schedule(kind, len(betas) - 1, betas, alphas, np.cumprod(alphas))


def linear_schedule(steps: int = 50, beta_start: float = 2e-3, beta_end: float = 0.4) -> Schedule:
    """Betas linear in t; the paper's single-image setting is beta_1=2e-3, beta_T=0.4 at T=50."""
    return _from_betas("linear", np.linspace(beta_start, beta_end, steps, dtype=np.float64))


def cosine_schedule(steps: int = 50, offset: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Nichol & Dhariwal's cosine schedule: abar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2) / f(0)."""
    t = np.arange(steps + 1, dtype=np.float64) / steps
    f = np.cos((t + offset) / (1.0 + offset) * math.pi / 2.0) ** 2
    abar = f / f[0]
    betas = np.clip(1.0 - abar[1:] / abar[:-1], 0.0, max_beta)
    return _from_betas("cosine", betas)


def make_schedule(kind: str, steps: int = 50) -> Schedule:
    if steps < 1:
        raise ValueError(f"schedule steps must be >= 1, got {steps}")
    if kind == "cosine":
        return cosine_schedule(steps)
    if kind == "linear":
        return linear_schedule(steps)
    raise ValueError(f"unknown schedule {kind!r}; valid schedules: {', '.join(SCHEDULES)}")
