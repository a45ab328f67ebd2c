"""TensorRT: plan refusal rules everywhere; build, parity and the Denoiser where a GPU and TensorRT are.

Without the tensorrt package or a CUDA GPU the hardware tests skip, naming which is missing.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from conftest import make_tiny_bundle
from sinfusion.bundle import Bundle, BundleError
from sinfusion.engines import EngineEntry, engine_entries
from sinfusion.runtimes.tensorrt_runtime import (TensorRTDenoiser, check_plan_matches,
                                                 unavailable_reason)

REASON = unavailable_reason()
needs_tensorrt = pytest.mark.skipif(REASON is not None, reason=f"TensorRT unavailable: {REASON}")

FACTS = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt_version": "10.9.0"}


def plan_entry(**facts) -> EngineEntry:
    return EngineEntry("projector", "tensorrt", 1, 16, 24, "fp16", "engines/p.plan", "0" * 64, 0.01,
                       **{**FACTS, **facts})


def test_plan_for_this_gpu_and_version_is_accepted():
    check_plan_matches(plan_entry(), FACTS, "p.plan")


@pytest.mark.parametrize("field,value", [("gpu", "NVIDIA A10G"), ("compute_capability", "8.6"),
                                         ("tensorrt_version", "10.3.0")])
def test_plan_for_another_gpu_or_version_says_re_export(field, value):
    with pytest.raises(BundleError, match=f"built for .*{value}.*re-export it here"):
        check_plan_matches(plan_entry(**{field: value}), FACTS, "p.plan")


def test_manifest_entry_round_trip_keeps_the_gpu_facts():
    entry = plan_entry()
    assert EngineEntry.from_dict(entry.to_dict()) == entry
    onnx = EngineEntry("projector", "onnx", 1, 16, 24, "fp32", "engines/p.onnx", "0" * 64, 0.0)
    assert "gpu" not in onnx.to_dict()


@pytest.mark.skipif(REASON is None, reason="TensorRT is available here")
def test_denoiser_without_tensorrt_says_why(tiny_bundle):
    with pytest.raises(BundleError, match=re.escape(f"TensorRT engines cannot run here: {REASON}")):
        TensorRTDenoiser(tiny_bundle)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from sinfusion.export import ExportOptions, export_bundle

    bundle = make_tiny_bundle(tmp_path_factory.mktemp("trt") / "tiny")
    export_bundle(bundle, ExportOptions(kinds=("onnx", "tensorrt"), batches=(1, 4)))
    return Bundle.open(bundle.path)


@needs_tensorrt
def test_tensorrt_export_records_the_device(exported):
    import tensorrt as trt
    import torch

    plans = engine_entries(exported, "tensorrt")
    assert len(plans) == 6
    for e in plans:
        assert e.precision == "fp16" and e.file.endswith(".plan")
        assert e.gpu == torch.cuda.get_device_name() and e.tensorrt_version == trt.__version__
        assert e.parity_max_abs_error <= 5e-2


@needs_tensorrt
@pytest.mark.parametrize("n", [1, 3, 4, 5])
def test_tensorrt_step_matches_pytorch(exported, n):
    from sinfusion.export.parity import parity_inputs
    from sinfusion.runtimes.torch_runtime import TorchDenoiser

    trt_rt, torch_rt = TensorRTDenoiser(exported), TorchDenoiser(exported)
    assert trt_rt.name == "tensorrt" and trt_rt.batch_sizes("predictor") == [1, 4]
    feed = parity_inputs(exported.role("predictor").network, exported.sampling()["predictor"], n,
                         16, 24, seed=n)
    args = (feed["x"], feed["cond"], feed["t"], feed["k"], feed["coef"], feed["noise"])
    np.testing.assert_allclose(trt_rt("predictor", *args), torch_rt("predictor", *args),
                               atol=5e-2, rtol=0)


@needs_tensorrt
def test_plan_from_another_gpu_is_refused_at_load(exported, tmp_path):
    shutil.copytree(exported.path, tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    for d in manifest["engines"]:
        if d["kind"] == "tensorrt":
            d["gpu"] = "Some Other GPU"
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="Some Other GPU.*re-export"):
        TensorRTDenoiser(Bundle.open(tmp_path / "b"))
