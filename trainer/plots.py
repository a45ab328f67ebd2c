"""Loss curves of a bundle's training, read from training/<role>.json (matplotlib, a dev extra)."""

from __future__ import annotations

import io
import os
from pathlib import Path

from sinfusion.bundle import BundleError
from sinfusion.config import ROLES
from sinfusion.io.atomic import atomic_write_bytes

from .checkpoint import load_state


def plot_losses(bundle_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """One panel per trained role: the windowed mean loss against the step (log scale)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BundleError("plotting needs matplotlib (pip install matplotlib)") from None
    states = {r: s for r in ROLES if (s := load_state(Path(bundle_dir), r)) is not None and s.losses}
    if not states:
        raise BundleError(f"{bundle_dir}: no training records (training/<role>.json) to plot")
    fig, axes = plt.subplots(1, len(states), figsize=(4 * len(states), 3), squeeze=False)
    for ax, (role, state) in zip(axes[0], states.items()):
        steps, losses = zip(*state.losses)
        ax.plot(steps, losses, lw=1)
        ax.set_yscale("log")
        ax.set_title(f"{role} ({state.settings.get(f'{role}_target', '')} target)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MSE loss")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return Path(out)
