"""Export after real (short) training: the trainer's bundle exports, and ONNX Runtime reproduces
PyTorch's frames on trained weights, whose activations differ from a random initialisation."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_clip
from sinfusion import sampling as S
from sinfusion.bundle import Bundle
from sinfusion.engines import PARITY_BOUND, engine_entries

training = pytest.importorskip("sinfusion.trainer.training", reason="the trainer package is not present")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from sinfusion.trainer.presets import get_preset

    config = get_preset("tiny", channels=8, blocks=2, predictor_steps=20, projector_steps=20,
                        interpolator_steps=20, checkpoint_every=0, preview_every=0)
    out = tmp_path_factory.mktemp("trained") / "clip"
    training.train_bundle(tiny_clip(6), out, config, roles=["predictor", "projector"],
                          progress=False, device="cpu")
    return Bundle.open(out)


def test_trained_bundle_exports_and_samples_like_pytorch(trained):
    from sinfusion.export import export_bundle
    from sinfusion.runtimes.onnx_runtime import OnnxDenoiser
    from sinfusion.runtimes.torch_runtime import TorchDenoiser

    entries = export_bundle(trained)
    assert {(e.role, e.batch) for e in entries} == {(r, b) for r in ("predictor", "projector")
                                                    for b in (1, 4)}
    assert all(e.parity_max_abs_error <= PARITY_BOUND["fp32"] for e in engine_entries(trained))
    bundle = Bundle.open(trained.path)
    bundle_sampling = bundle.sampling()
    shape = (bundle.manifest.height, bundle.manifest.width)
    frames = []
    for runtime in (OnnxDenoiser(bundle, threads=1), TorchDenoiser(bundle)):
        loop = S.generate(bundle_sampling, shape, 2, np.random.default_rng(11),
                          S.SamplingOptions(steps=10, correction_steps=3))
        frames.append([f.image for f in S.run(loop, runtime)])
    for a, b in zip(*frames):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
