"""The server on exported ONNX engines: `--runtime auto` picks onnxruntime-cpu over torch-cpu, the
scheduler batches streams onto the exported batch sizes, and frames match the PyTorch runtime's."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from sinfusion.bundle import Bundle
from sinfusion.server import ServerConfig
from sinfusion.server.background import BackgroundServer
from sinfusion.v1 import sinfusion_pb2 as pb
from tests.conftest import make_tiny_bundle, serve

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from sinfusion.export.pipeline import ExportOptions, export_bundle

    root = tmp_path_factory.mktemp("models")
    bundle = make_tiny_bundle(root / "tiny")
    export_bundle(Bundle.open(bundle.path), ExportOptions(kinds=("onnx",), batches=(1, 4)))
    return root


def fast(seed: int) -> pb.SamplingParams:
    return pb.SamplingParams(steps=2, method=pb.SAMPLING_METHOD_DDIM, correction_steps=1, seed=seed)


def frames(stub, seed: int, count: int = 3) -> np.ndarray:
    reply = stub.Extrapolate(pb.ExtrapolateRequest(model="tiny", frames=count, sampling=fast(seed)))
    return np.stack([np.frombuffer(f.rgb, np.uint8) for f in reply]).astype(int)


def test_auto_serves_exported_engines_with_onnxruntime(exported, tmp_path):
    with serve(exported, grace=0.5) as (running, stub):
        info = stub.DescribeModel(pb.DescribeModelRequest(model="tiny"))
        assert info.runtime == "onnxruntime-cpu" and list(info.batch_sizes) == [1, 4]
        assert list(info.capabilities) == ["extrapolate", "generate", "upsample"]
        onnx_alone = frames(stub, 5)
        with ThreadPoolExecutor(4) as pool:
            batched = [pool.submit(frames, stub, s) for s in (5, 6, 7, 8)]
            onnx_batched = batched[0].result()
            [f.result() for f in batched]
        registry = running.service.metrics.registry
        assert registry.get_sample_value("sinfusion_engine_batch_bucket",
                                         {"model": "tiny", "role": "predictor", "le": "3.0"}) < \
            registry.get_sample_value("sinfusion_engine_batch_count", {"model": "tiny", "role": "predictor"})
    assert np.abs(onnx_alone - onnx_batched).max() <= 2
    # The same seed on the PyTorch runtime: the same loop and draws, so the same frames up to rounding.
    with serve(exported, runtime="torch-cpu", grace=0.5) as (running, stub):
        assert stub.DescribeModel(pb.DescribeModelRequest(model="tiny")).runtime == "torch-cpu"
        assert np.abs(frames(stub, 5) - onnx_alone).max() <= 2


def test_damaged_engine_refuses_to_start(exported, tmp_path, caplog):
    from sinfusion.server.config import ConfigError

    copy = tmp_path / "models"
    shutil.copytree(exported, copy)
    engine = next((copy / "tiny" / "engines").iterdir())
    engine.write_bytes(engine.read_bytes()[:-8] + b"damaged!")
    with pytest.raises(ConfigError, match="checksum mismatch"):
        BackgroundServer(ServerConfig(models=copy, runtime="onnxruntime-cpu")).start()
    # auto falls back to PyTorch, whose weights are intact, and says so: never silently
    caplog.set_level("WARNING", logger="sinfusion.server")
    with BackgroundServer(ServerConfig(models=copy, grace=0.5)) as running:
        assert running.models["tiny"].runtime.name == "torch-cpu"
    assert "bundle tiny: falling back to runtime torch-cpu because onnxruntime-cpu: " in caplog.text
    assert f"{engine.name}: checksum mismatch" in caplog.text


def test_engines_exported_before_the_coarse_correction_are_reported(exported, tmp_path, caplog):
    """A manifest given a margin or a coarse correction after its export lacks engines at the sizes
    they take: auto serves on PyTorch, every capability kept, and says which export to run."""
    copy = tmp_path / "models"
    shutil.copytree(exported, copy)
    bundle = Bundle.open(copy / "tiny")
    m = bundle.manifest
    m.predictor_margin, m.coarse_correction_level, m.coarse_correction_weight = 0, 3, 0.25
    bundle.save_manifest()
    with BackgroundServer(ServerConfig(models=copy, grace=0.5)) as running:  # no margin: one size
        assert running.models["tiny"].runtime.name == "onnxruntime-cpu"
    m.predictor_margin = 2  # the Predictor's canvas and the Projector's second size are missing
    bundle.save_manifest()
    caplog.set_level("WARNING", logger="sinfusion.server")
    with BackgroundServer(ServerConfig(models=copy, grace=0.5)) as running:
        assert running.models["tiny"].runtime.name == "torch-cpu"
        assert list(running.models["tiny"].capabilities) == ["extrapolate", "generate", "upsample"]
    assert "falling back to runtime torch-cpu because onnxruntime-cpu: " in caplog.text
    assert f"no onnx engine for predictor at {m.width + 4}x{m.height + 4}" in caplog.text
    assert f"--roles predictor --size {m.width}x{m.height}" in caplog.text
    # the Predictor re-exported at its canvas: now the Projector's canvas is the one named
    from sinfusion.export.pipeline import ExportOptions, export_bundle
    export_bundle(Bundle.open(bundle.path), ExportOptions(kinds=("onnx",), batches=(1, 4),
                                                          roles=("predictor",)))
    caplog.clear()
    with BackgroundServer(ServerConfig(models=copy, grace=0.5)) as running:
        assert running.models["tiny"].runtime.name == "torch-cpu"
    assert f"no onnx engine for projector at {m.width + 4}x{m.height + 4}" in caplog.text
    assert f"--roles projector --size {m.width}x{m.height}" in caplog.text


def test_damaged_weights_beside_intact_engines_are_reported(exported, tmp_path, caplog):
    copy = tmp_path / "models"
    shutil.copytree(exported, copy)
    weights = copy / "tiny" / "weights" / "predictor.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    caplog.set_level("WARNING", logger="sinfusion.server")
    # The engines (verified) serve; the damage is reported, not silent.
    with BackgroundServer(ServerConfig(models=copy, grace=0.5)) as running:
        assert running.models["tiny"].runtime.name == "onnxruntime-cpu"
    assert "predictor.safetensors: checksum mismatch; the weights file is damaged" in caplog.text
    assert "not used by onnxruntime-cpu" in caplog.text
    # PyTorch would read them: that bundle is refused.
    from sinfusion.server.config import ConfigError

    with pytest.raises(ConfigError, match="predictor.safetensors: checksum mismatch"):
        BackgroundServer(ServerConfig(models=copy, runtime="torch-cpu")).start()


def test_fixed_batch_is_bit_exact_on_onnx_engines(exported):
    with serve(exported, runtime="onnxruntime-cpu", fixed_batch=True, grace=0.5) as (running, stub):
        alone = frames(stub, 21)
        with ThreadPoolExecutor(3) as pool:
            batched = [pool.submit(frames, stub, s) for s in (21, 22, 23)]
            together = batched[0].result()
            [f.result() for f in batched]
        registry = running.service.metrics.registry
        labels = {"model": "tiny", "role": "predictor"}
        shared = registry.get_sample_value("sinfusion_batch_size_count", labels) - \
            registry.get_sample_value("sinfusion_batch_size_bucket", {**labels, "le": "1.0"})
    assert shared > 0
    np.testing.assert_array_equal(alone, together)
