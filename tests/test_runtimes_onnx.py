"""The ONNX Runtime Denoiser on the CPU: parity with PyTorch per step and per frame, batching, and
the refusals (no engines, wrong shape, damaged or replaced engine files)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import make_tiny_bundle
from sinfusion import sampling as S
from sinfusion.bundle import Bundle, BundleError
from sinfusion.engines import engine_entries
from sinfusion.export import ExportOptions, export_bundle
from sinfusion.frames import to_model
from sinfusion.runtimes.onnx_runtime import OnnxDenoiser
from sinfusion.runtimes.torch_runtime import TorchDenoiser


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("ort") / "tiny")
    export_bundle(bundle, ExportOptions(batches=(1, 4)))
    return Bundle.open(bundle.path)


@pytest.fixture(scope="module")
def runtimes(exported):
    return OnnxDenoiser(exported, threads=1), TorchDenoiser(exported)


@pytest.fixture
def copy(exported, tmp_path):
    shutil.copytree(exported.path, tmp_path / "b")
    return Bundle.open(tmp_path / "b")


def step_inputs(bundle, role, n, seed=0):
    """Random but realistic inputs of one batched step (coefficients from the role's schedule)."""
    from sinfusion.export.parity import parity_inputs

    feed = parity_inputs(bundle.role(role).network, bundle.sampling()[role], n,
                         bundle.manifest.height, bundle.manifest.width, seed)
    return (feed["x"], feed.get("cond"), feed["t"], feed.get("k", np.zeros(n, np.float32)),
            feed["coef"], feed["noise"])


def test_name_and_batch_sizes(runtimes, exported):
    ort_rt, _ = runtimes
    assert ort_rt.name == "onnxruntime-cpu"
    for role in exported.roles:
        assert ort_rt.batch_sizes(role) == [1, 4]


@pytest.mark.parametrize("role", ["predictor", "projector", "interpolator"])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_one_step_matches_pytorch_for_any_batch(runtimes, exported, role, n):
    """Batches other than 1 and 4 are split or zero-padded; each row still matches PyTorch."""
    ort_rt, torch_rt = runtimes
    args = step_inputs(exported, role, n, seed=n)
    out = ort_rt(role, *args)
    assert out.shape == (n, 3, exported.manifest.height, exported.manifest.width)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, torch_rt(role, *args), atol=1e-5, rtol=0)


def test_whole_frames_match_pytorch_with_the_same_seed(runtimes, exported):
    """A new clip of 2 frames: Projector from noise, then Predictor -> Projector correction, 50 + 50
    + 3 steps each, through sinfusion.sampling.run on both runtimes with one seed."""
    bundle_sampling = exported.sampling()
    shape = (exported.manifest.height, exported.manifest.width)
    options = S.SamplingOptions(correction_steps=3)
    frames = {}
    for name, runtime in zip(("onnx", "torch"), runtimes):
        loop = S.generate(bundle_sampling, shape, 2, np.random.default_rng(7), options)
        frames[name] = [f.image for f in S.run(loop, runtime)]
    assert len(frames["onnx"]) == 2
    for a, b in zip(frames["onnx"], frames["torch"]):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


def test_extrapolation_from_a_clip_frame_matches_pytorch(runtimes, exported):
    bundle_sampling = exported.sampling()
    start = to_model(exported.frames()[0])
    out = {}
    for name, runtime in zip(("onnx", "torch"), runtimes):
        loop = S.extrapolate(bundle_sampling, start, 1, -2, np.random.default_rng(3),
                             S.SamplingOptions(steps=10, method="ddim"))
        out[name] = [f.image for f in S.run(loop, runtime)]
    np.testing.assert_allclose(out["onnx"][0], out["torch"][0], atol=1e-4, rtol=0)


def test_no_engines_of_this_kind(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bare", roles=("projector",))
    with pytest.raises(BundleError, match=r"no onnx engines; run: sinfusion-export .* --kind onnx"):
        OnnxDenoiser(bundle)


def test_no_engine_for_this_shape(runtimes, exported):
    ort_rt, _ = runtimes
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(BundleError, match="no onnx engine for projector at 8x8"):
        ort_rt("projector", x, None, np.ones(1, np.float32), np.zeros(1, np.float32),
               np.zeros((1, 5), np.float32), x)
    with pytest.raises(BundleError, match="no onnx engine for predictor at 24x16"):
        OnnxDenoiser(exported, roles=["projector"]).batch_sizes("predictor")


def test_checksum_mismatch_names_the_file(copy):
    entry = engine_entries(copy, "onnx", "predictor")[0]
    path = copy.path / entry.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, e.g. a damaged copy
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{entry.file}: checksum mismatch"):
        OnnxDenoiser(copy)


def test_corrupted_engine_with_matching_checksum_is_refused(copy):
    """A file that is not an ONNX model (but listed with its own checksum) fails at load, clearly."""
    import hashlib

    entry = engine_entries(copy, "onnx", "projector")[0]
    garbage = b"not an onnx model" * 10
    (copy.path / entry.file).write_bytes(garbage)
    manifest = json.loads((copy.path / "manifest.json").read_text())
    for d in manifest["engines"]:
        if d["file"] == entry.file:
            d["sha256"] = hashlib.sha256(garbage).hexdigest()
    (copy.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"{entry.file}: ONNX Runtime cannot load this engine"):
        OnnxDenoiser(Bundle.open(copy.path))


def test_missing_engine_file(copy):
    entry = engine_entries(copy, "onnx", "interpolator")[0]
    (copy.path / entry.file).unlink()
    with pytest.raises(BundleError, match=f"{entry.file}: engine file missing"):
        OnnxDenoiser(copy)


def test_provider_that_is_absent_is_an_error_not_a_fallback(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider present here")
    with pytest.raises(BundleError, match="lacks CUDAExecutionProvider"):
        OnnxDenoiser(exported, providers=["CUDAExecutionProvider"])


def test_precision_choice(copy):
    export_bundle(copy, ExportOptions(roles=("projector",), batches=(1,), precision="fp16"))
    bundle = Bundle.open(copy.path)
    default = OnnxDenoiser(bundle, roles=["projector"])
    assert {e.precision for e in default.entries} == {"fp32"}  # the kind's default wins
    half = OnnxDenoiser(bundle, precision="fp16")
    assert half.batch_sizes("projector") == [1] and {e.precision for e in half.entries} == {"fp16"}
    with pytest.raises(BundleError, match="no onnx engine for predictor"):
        half.batch_sizes("predictor")
    with pytest.raises(BundleError, match="no onnx engines for predictor; run: .* --roles predictor"):
        OnnxDenoiser(bundle, roles=["projector", "predictor"], precision="fp16")


def test_the_sampler_benchmarks_copy_of_an_exported_bundle_lists_only_its_own_engines(exported, tmp_path):
    """bench_sampler serves a copy exported for the Predictor and Projector only; the source's other
    engines (the Interpolator's) are not copied, so they must not stay listed (the server refuses a
    listed engine whose file is missing)."""
    from bench.bench_sampler import prepared_copy

    copy = Bundle.open(prepared_copy(exported.path, tmp_path))
    listed = {e["role"] for e in copy.manifest.engines}
    assert listed == {"predictor", "projector"} and "interpolator" in copy.roles
    assert all((copy.path / e["file"]).is_file() for e in copy.manifest.engines)
    OnnxDenoiser(copy, threads=1)
    # a setting's margin serves a copy with it: the Predictor's engines at that canvas
    from bench.bench_sampler import Setting

    setting = Setting.parse("onnx:ddim:3:1:2")
    assert (setting.margin, setting.label(50)) == (2, "onnx ddim 3+1 m2")
    assert Setting.parse("torch:ddpm:0:3").margin is None
    wide = Bundle.open(prepared_copy(exported.path, tmp_path / "m2", setting.margin))
    assert wide.manifest.predictor_margin == 2
    assert {(e["role"], e["height"]) for e in wide.manifest.engines} == {
        ("predictor", wide.manifest.height + 4), ("projector", wide.manifest.height)}


def test_a_predictor_margin_exports_and_serves_the_predictor_on_its_canvas(tmp_path):
    """With predictor_margin M the Predictor's engines take the frame plus M px on every side, the
    other roles' the frame; ONNX Runtime finds them by default and extrapolates as PyTorch does,
    frames of the clip's size."""
    bundle = make_tiny_bundle(tmp_path / "margin")
    bundle.manifest.predictor_margin = 4
    bundle.save_manifest()
    export_bundle(bundle, ExportOptions(batches=(1,)))
    bundle = Bundle.open(bundle.path)
    m = bundle.manifest
    shapes = {e.role: (e.height, e.width) for e in engine_entries(bundle)}
    assert shapes == {"predictor": (m.height + 8, m.width + 8), "projector": (m.height, m.width),
                      "interpolator": (m.height, m.width)}
    ort_rt = OnnxDenoiser(bundle, threads=1)
    assert ort_rt.batch_sizes("predictor") == [1]  # at the canvas, without being told its size
    start = to_model(bundle.frames()[0])
    out = {}
    for name, runtime in (("onnx", ort_rt), ("torch", TorchDenoiser(bundle))):
        loop = S.extrapolate(bundle.sampling(), start, 2, 1, np.random.default_rng(3),
                             S.SamplingOptions(steps=3, method="ddim", correction_steps=1))
        out[name] = [f.image for f in S.run(loop, runtime)]
    assert [f.shape for f in out["onnx"]] == [(3, m.height, m.width)] * 2
    np.testing.assert_allclose(np.stack(out["onnx"]), np.stack(out["torch"]), atol=1e-4, rtol=0)


def test_a_coarse_correction_exports_and_serves_the_projector_at_both_sizes(tmp_path):
    """A bundle correcting coarsely with a margin has Projector engines at the frame and at the
    Predictor's canvas; ONNX Runtime runs each step on the one of its size, as PyTorch does."""
    bundle = make_tiny_bundle(tmp_path / "coarse")
    m = bundle.manifest
    m.predictor_margin, m.coarse_correction_level, m.coarse_correction_weight = 2, 3, 0.25
    bundle.save_manifest()
    export_bundle(bundle, ExportOptions(batches=(1,), roles=("predictor", "projector")))
    bundle = Bundle.open(bundle.path)
    assert {(e.role, e.height, e.width) for e in engine_entries(bundle)} == {
        ("predictor", m.height + 4, m.width + 4), ("projector", m.height, m.width),
        ("projector", m.height + 4, m.width + 4)}
    start = to_model(bundle.frames()[0])
    out = {}
    for name, runtime in (("onnx", OnnxDenoiser(bundle, threads=1)), ("torch", TorchDenoiser(bundle))):
        loop = S.extrapolate(bundle.sampling(), start, 2, 1, np.random.default_rng(3),
                             S.SamplingOptions(steps=3, method="ddim", correction_steps=1))
        out[name] = [f.image for f in S.run(loop, runtime)]
    np.testing.assert_allclose(np.stack(out["onnx"]), np.stack(out["torch"]), atol=1e-4, rtol=0)
