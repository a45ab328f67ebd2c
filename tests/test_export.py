"""Export to ONNX: files, manifest entries, parity, atomic re-export, and the CLI's error paths."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import make_tiny_bundle
from sinfusion.bundle import Bundle, RoleEntry, weights_path
from sinfusion.config import default_config
from sinfusion.engines import PARITY_BOUND, engine_entries, input_specs
from sinfusion.export import ExportError, ExportOptions, export_bundle
from sinfusion.export.cli import main
from sinfusion.network import SinFusionNet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny three-role bundle exported with the defaults (ONNX fp32, batch 1 and 4)."""
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("export") / "tiny")
    export_bundle(bundle)
    return Bundle.open(bundle.path)


@pytest.fixture
def copy(exported, tmp_path):
    """A private copy of the exported bundle, for tests that change it."""
    shutil.copytree(exported.path, tmp_path / "b")
    return Bundle.open(tmp_path / "b")


def onnx_io(path: Path):
    model = onnx.load(str(path))
    dims = [(i.name, tuple(d.dim_value for d in i.type.tensor_type.shape.dim),
             i.type.tensor_type.elem_type) for i in model.graph.input]
    return model, dims


def test_default_export_lists_every_engine(exported):
    entries = engine_entries(exported)
    m = exported.manifest
    assert sorted((e.role, e.batch) for e in entries) == sorted(
        (r, b) for r in ("predictor", "projector", "interpolator") for b in (1, 4))
    for e in entries:
        path = exported.path / e.file
        assert (e.kind, e.precision, e.height, e.width) == ("onnx", "fp32", m.height, m.width)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == e.sha256
        assert 0 <= e.parity_max_abs_error <= PARITY_BOUND["fp32"]
        # The graph's inputs are exactly sinfusion.engines' description (names, shapes, float32).
        _, dims = onnx_io(path)
        config = exported.role(e.role).network
        assert dims == [(s.name, s.shape, onnx.TensorProto.FLOAT)
                        for s in input_specs(config, e.batch, e.height, e.width)]
    raw = json.loads((exported.path / "manifest.json").read_text())["engines"]
    assert all("gpu" not in d and d["file"].startswith("engines/") for d in raw)
    # Only the Predictor has k, only the Projector lacks cond.
    names = {e.role: [d[0] for d in onnx_io(exported.path / e.file)[1]] for e in entries}
    assert names["predictor"] == ["x", "cond", "t", "k", "coef", "noise"]
    assert names["projector"] == ["x", "t", "coef", "noise"]
    assert names["interpolator"] == ["x", "cond", "t", "coef", "noise"]


def test_fp16_engine_is_half_inside_float_outside(copy):
    (entry,) = export_bundle(copy, ExportOptions(roles=("projector",), batches=(2,),
                                                 precision="fp16"))
    model, dims = onnx_io(copy.path / entry.file)
    assert {d[2] for d in dims} == {onnx.TensorProto.FLOAT}
    weight_types = {init.data_type for init in model.graph.initializer if len(init.dims) == 4}
    assert weight_types == {onnx.TensorProto.FLOAT16}
    assert entry.precision == "fp16" and 0 < entry.parity_max_abs_error <= PARITY_BOUND["fp16"]
    # The fp32 engines of the other shapes are still listed next to it.
    assert len(engine_entries(copy)) == 7


def test_reexport_replaces_engines_and_removes_old_files(copy):
    old = {e.key: e for e in engine_entries(copy)}
    # New weights for the projector, as after more training.
    torch.manual_seed(123)
    config = default_config("projector", channels=8, blocks=2)
    net = SinFusionNet(config)
    copy.write_weights("projector", RoleEntry(config, {"kind": "cosine", "steps": 50}, "x0",
                                              weights_path("projector")),
                       {k: v.numpy() for k, v in net.state_dict().items()})
    new = export_bundle(copy, ExportOptions(roles=("projector",)))
    now = {e.key: e for e in engine_entries(Bundle.open(copy.path))}
    assert now.keys() == old.keys()
    for e in new:
        assert e.sha256 != old[e.key].sha256 and now[e.key].file == e.file
        assert not (copy.path / old[e.key].file).exists()
    files = sorted(p.name for p in (copy.path / "engines").iterdir())
    assert files == sorted(Path(e.file).name for e in now.values())


def test_parity_over_the_bound_refuses_and_writes_nothing(copy):
    before = (copy.path / "manifest.json").read_bytes()
    files = sorted(os.listdir(copy.path / "engines"))
    with pytest.raises(ExportError, match="parity error .* exceeds the bound 1e-12; nothing"):
        export_bundle(copy, ExportOptions(roles=("projector",), precision="fp16",
                                          max_error=1e-12))
    assert (copy.path / "manifest.json").read_bytes() == before
    assert sorted(os.listdir(copy.path / "engines")) == files


@pytest.mark.slow  # the torch.export-based exporter takes seconds per engine
def test_dynamo_exporter_gives_the_same_step(copy):
    (entry,) = export_bundle(copy, ExportOptions(roles=("projector",), batches=(1,), size=(20, 12),
                                                 dynamo=True))
    assert (entry.height, entry.width) == (12, 20)
    assert entry.parity_max_abs_error <= PARITY_BOUND["fp32"]


def test_cli_exports_with_options(copy, capsys):
    rc = main([str(copy.path), "--roles", "projector,predictor", "--batch", "2", "--size", "32x8"])
    out = capsys.readouterr().out
    assert rc == 0 and "2 engine(s) written" in out
    shapes = {(e.role, e.batch, e.width, e.height) for e in engine_entries(Bundle.open(copy.path))}
    assert {("projector", 2, 32, 8), ("predictor", 2, 32, 8)} <= shapes


@pytest.mark.parametrize("args,code,message", [
    (["{missing}"], 3, "no such bundle folder"),
    (["{bundle}", "--roles", "critic"], 2, "unknown role 'critic'; valid roles: predictor"),
    (["{bundle}", "--size", "0x16"], 2, "positive integers (e.g. 256x144), got '0x16'"),
    (["{bundle}", "--size", "24x5000"], 2, "height must be in [1, 4096], got 5000"),
    (["{bundle}", "--size", "24by16"], 2, "size must be WxH"),
    (["{bundle}", "--batch", "1,x"], 2, "comma-separated integers"),
    (["{bundle}", "--batch", "0"], 2, "batch must be in [1, 64], got 0"),
    (["{bundle}", "--opset", "99"], 2, "opset must be in [13, 20], got 99"),
    (["{bundle}", "--precision", "int8"], 2, "invalid choice: 'int8'"),
    (["{bundle}", "--max-error", "0"], 2, "max error must be > 0"),
])
def test_cli_errors_are_one_line(copy, tmp_path, capsys, args, code, message):
    before = (copy.path / "manifest.json").read_bytes()
    rc = main([a.format(bundle=copy.path, missing=tmp_path / "nope") for a in args])
    err = capsys.readouterr().err
    assert rc == code
    assert err.count("\n") == 1 and message in err and err.startswith("sinfusion-export: ")
    assert (copy.path / "manifest.json").read_bytes() == before


def test_cli_untrained_role(tmp_path, capsys):
    bundle = make_tiny_bundle(tmp_path / "img", roles=("projector",))
    assert main([str(bundle.path), "--roles", "predictor"]) == 3
    assert "has no trained predictor (has: projector)" in capsys.readouterr().err


def test_cli_without_tensorrt_says_so_in_one_line(copy):
    """Runs the installed entry point's module as a user would, in a fresh process."""
    from sinfusion.runtimes.tensorrt_runtime import unavailable_reason

    reason = unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT and a GPU are present here; see test_runtimes_tensorrt.py")
    before = (copy.path / "manifest.json").read_bytes()
    proc = subprocess.run([sys.executable, "-m", "sinfusion.export.cli", str(copy.path), "--kind", "all"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == f"sinfusion-export: cannot build TensorRT engines: {reason}\n"
    assert (copy.path / "manifest.json").read_bytes() == before


def test_export_refuses_damaged_weights(copy, capsys):
    entry = copy.role("projector")
    path = copy.path / entry.weights
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert main([str(copy.path), "--roles", "projector"]) == 3
    assert "checksum mismatch" in capsys.readouterr().err


def test_parity_inputs_cover_the_noisiest_step(exported):
    from sinfusion.export.parity import parity_inputs

    rs = exported.sampling()["predictor"]
    feed = parity_inputs(exported.role("predictor").network, rs, 4, 16, 24, seed=0)
    assert feed["t"][0] == rs.schedule.steps and np.all(np.isin(feed["k"], [-3, -2, -1, 1, 2, 3]))
    assert abs(feed["coef"][0, 0]) > 100  # eps target: 1 / sqrt(abar_T)


def test_a_canvas_past_the_shape_bounds_is_refused_before_any_work(copy):
    """A Predictor's canvas (frame + 2 x predictor_margin) is checked with the frame size, and the
    error says why the size is larger than asked."""
    copy.manifest.predictor_margin = 4
    copy.save_manifest()
    before = engine_entries(Bundle.open(copy.path))
    with pytest.raises(ExportError, match=r"width .*4100.*frame size plus the bundle's predictor_margin"):
        export_bundle(Bundle.open(copy.path), ExportOptions(size=(4092, 16), batches=(1,)))
    assert engine_entries(Bundle.open(copy.path)) == before
