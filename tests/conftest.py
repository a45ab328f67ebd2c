"""Shared fixtures: tiny networks, tiny clips and tiny bundles, all made here in milliseconds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Tests share 2 cores with each other and with servers they start: keep torch to one thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def tiny_clip(frames: int = 8, height: int = 16, width: int = 24, seed: int = 0) -> np.ndarray:
    """A small moving pattern: a bright blob drifting over a textured background, uint8 (N,H,W,3)."""
    rng = np.random.default_rng(seed)
    background = rng.integers(40, 120, size=(height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for i in range(frames):
        cy, cx = height / 2, (i * 2) % width
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)[..., None]
        out.append(np.clip(background + blob * np.array([200, 150, 60]), 0, 255).astype(np.uint8))
    return np.stack(out)


def make_tiny_bundle(path: Path, roles=("predictor", "projector", "interpolator"),
                     height: int = 16, width: int = 24, frames: int = 8, seed: int = 0,
                     name: str | None = None):
    """A bundle with randomly initialised tiny networks (2 blocks, 8 channels): real files, no training."""
    import torch

    from sinfusion.bundle import Bundle, Manifest, RoleEntry, weights_path
    from sinfusion.config import default_config
    from sinfusion.network import SinFusionNet

    torch.manual_seed(seed)
    manifest = Manifest(name=name or path.name, mode="video", width=width, height=height, fps=12.0,
                        frame_count=frames, source={"kind": "test"})
    bundle = Bundle.create(path, manifest, tiny_clip(frames, height, width, seed))
    for role in roles:
        config = default_config(role, channels=8, blocks=2)
        net = SinFusionNet(config)
        entry = RoleEntry(config, {"kind": "cosine", "steps": 50},
                          "eps" if role == "predictor" else "x0", weights_path(role))
        bundle.write_weights(role, entry, {k: v.numpy() for k, v in net.state_dict().items()})
    return bundle


@pytest.fixture
def tiny_bundle(tmp_path):
    return make_tiny_bundle(tmp_path / "tiny")
