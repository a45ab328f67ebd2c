"""The trainer's compiled step (trainer/compiled.py), exercised on the CPU: same losses as the eager
step, same checkpoint keys, resume works; a failing compile falls back to eager with a warning."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from sinfusion.bundle import Bundle, Manifest
from sinfusion.schedule import make_schedule
from sinfusion.trainer import compiled as trainer_compiled
from sinfusion.trainer.compiled import compile_fallback, make_optimizer
from sinfusion.trainer.loop import build_run, train_role
from sinfusion.trainer.presets import get_preset
from tests.conftest import tiny_clip


def tiny_config(steps: int):
    return get_preset("tiny", channels=8, blocks=2, batch_size=2, checkpoint_every=0, preview_every=0,
                      seed=0, preview_steps=2).with_steps(steps)


def train(path, compiled: bool, steps: int = 4):
    clip = tiny_clip(6, 16, 24)
    bundle = Bundle.create(path, Manifest("t", "video", 24, 16, 12.0, 6), clip)
    run = build_run("predictor", tiny_config(steps), make_schedule("cosine", 50), torch.device("cpu"),
                    {}, compiled=compiled)
    losses = []
    train_role(run, bundle, clip, progress=False, callback=lambda r, s, loss: losses.append(loss))
    return run, losses


def test_compiled_training_matches_eager(tmp_path):
    run, losses = train(tmp_path / "c", compiled=True)
    if compile_fallback(run.net):
        pytest.skip(f"torch.compile cannot run on this machine: {compile_fallback(run.net)}")
    _, eager = train(tmp_path / "e", compiled=False)
    np.testing.assert_allclose(losses, eager, rtol=1e-3, atol=1e-5)
    # compiled in place: the checkpoint and served weights keep their names
    assert not any(k.startswith("_orig_mod") for k in run.net.state_dict())
    served = Bundle.open(tmp_path / "c").weights("predictor")
    assert set(served) == set(run.ema.state_dict())


def test_failed_compile_trains_eagerly_with_a_warning(tmp_path, monkeypatch, caplog):
    def broken(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("inductor failed\ndetails")
        return run

    monkeypatch.setattr(trainer_compiled.torch, "compile", broken)
    with caplog.at_level(logging.WARNING, logger="sinfusion.trainer"):
        run, losses = train(tmp_path / "b", compiled=True, steps=2)
    assert compile_fallback(run.net) == "RuntimeError: inductor failed"
    assert "training eagerly" in caplog.text and len(losses) == 2 and np.isfinite(losses).all()


def test_fused_adam_only_on_cuda():
    net = torch.nn.Linear(2, 2)
    assert not make_optimizer(net.parameters(), 1e-3, torch.device("cpu")).defaults.get("fused")
    if torch.cuda.is_available():
        cuda_net = torch.nn.Linear(2, 2).cuda()
        assert make_optimizer(cuda_net.parameters(), 1e-3, torch.device("cuda")).defaults["fused"]
