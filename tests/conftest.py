"""Shared fixtures: tiny networks, tiny clips and tiny bundles, all made here in milliseconds, and the
server the gRPC tests talk to."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
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
                     name: str | None = None, mode: str = "video"):
    """A bundle with randomly initialised tiny networks (2 blocks, 8 channels): real files, no training.
    mode "image": a single-image bundle (one frame)."""
    import torch

    from sinfusion.bundle import Bundle, Manifest, RoleEntry, weights_path
    from sinfusion.config import default_config
    from sinfusion.network import SinFusionNet

    torch.manual_seed(seed)
    frames = 1 if mode == "image" else frames
    manifest = Manifest(name=name or path.name, mode=mode, width=width, height=height, fps=12.0,
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


# --- a server for the gRPC tests ---------------------------------------------------------------------
# A module's server is the fixture `running` (with `channel` and `stub` on it): it serves the bundles
# of `models_dir` with the ServerConfig fields of `server_settings`. A module that needs other bundles
# or settings overrides those two fixtures; `serve` starts a server of its own inside a test.

def bundles_folder(root: Path, **bundles: dict) -> Path:
    """A --models folder: one tiny bundle per keyword, named by it (the value: make_tiny_bundle's
    keyword arguments)."""
    for name, kwargs in bundles.items():
        make_tiny_bundle(root / name, **kwargs)
    return root


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """'tiny' (every role) and 'still' (a Projector only)."""
    return bundles_folder(tmp_path_factory.mktemp("models"), tiny={},
                          still={"roles": ("projector",), "seed": 1})


@pytest.fixture(scope="module")
def server_settings() -> dict:
    """The module server's ServerConfig fields besides `models`."""
    return {"grace": 0.5}


@pytest.fixture(scope="module")
def running(models_dir, server_settings):
    from sinfusion.server import ServerConfig
    from sinfusion.server.background import BackgroundServer

    with BackgroundServer(ServerConfig(models=models_dir, **server_settings)) as running:
        yield running


@pytest.fixture(scope="module")
def channel(running):
    import grpc

    with grpc.insecure_channel(running.target) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel):
    from sinfusion.v1 import sinfusion_pb2_grpc as pb_grpc

    return pb_grpc.SinFusionStub(channel)


@contextmanager
def serve(models: Path, **settings):
    """A server of the test's own on a thread, and a stub on a plain channel to it: (running, stub)."""
    import grpc

    from sinfusion.server import ServerConfig
    from sinfusion.server.background import BackgroundServer
    from sinfusion.v1 import sinfusion_pb2_grpc as pb_grpc

    with BackgroundServer(ServerConfig(models=models, **settings)) as running, \
            grpc.insecure_channel(running.target) as channel:
        yield running, pb_grpc.SinFusionStub(channel)


def raw(array: np.ndarray):
    """A uint8 (H, W, 3) image as a RawFrame message."""
    from sinfusion.v1 import sinfusion_pb2 as pb

    return pb.RawFrame(width=array.shape[1], height=array.shape[0], rgb=array.tobytes())


def pixels(frame) -> np.ndarray:
    """A Frame message's image, uint8 (H, W, 3); its bytes must be exactly the image."""
    assert len(frame.rgb) == frame.width * frame.height * 3
    return np.frombuffer(frame.rgb, np.uint8).reshape(frame.height, frame.width, 3)


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)
