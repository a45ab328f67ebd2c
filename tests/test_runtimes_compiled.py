"""The compiled, device-resident PyTorch runtime (sinfusion/runtimes/torch_compiled.py) on the CPU:
compiled-against-eager parity on tiny networks, the sampling loop with tensors kept between steps
(same frames and seeds as the numpy runtimes, alone and batched), the scheduler's uint8 conversion,
the eager fallback, the cache folder. CUDA-only checks (bf16, graphs) skip without a GPU."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from sinfusion import arrays
from sinfusion.config import default_config
from sinfusion.frames import to_model, to_uint8
from sinfusion.network import SinFusionNet
from sinfusion.runtimes import torch_compiled
from sinfusion.runtimes.torch_compiled import CompiledTorchDenoiser, use_cache_dir
from sinfusion.runtimes.torch_runtime import TorchDenoiser
from sinfusion.sampling import (BundleSampling, RoleSampling, SamplingOptions, extrapolate,
                                lockstep, run, run_requests, StepRequest, upsample)
from sinfusion.schedule import cosine_schedule

SIZE = (16, 24)
FAST = SamplingOptions(steps=3, method="ddim", correction_steps=2)
DDPM = SamplingOptions(steps=4, method="ddpm", correction_steps=2)
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(),
                               reason="needs a CUDA GPU (bf16, CUDA graphs); run bench/bench_gpu.py there")


def tiny_networks(roles=("predictor", "projector", "interpolator")) -> dict[str, SinFusionNet]:
    nets = {}
    for i, role in enumerate(roles):
        torch.manual_seed(10 + i)
        net = SinFusionNet(default_config(role, channels=8, blocks=2))
        with torch.no_grad():  # a head that is not zero, so the network's output matters
            for p in net.head.parameters():
                p.normal_(0.0, 0.2)
        nets[role] = net.eval()
    return nets


def sampling_facts(roles=("predictor", "projector", "interpolator")) -> BundleSampling:
    schedule = cosine_schedule(50)
    return BundleSampling({r: RoleSampling(schedule, "x0" if r != "predictor" else "eps") for r in roles})


@pytest.fixture(scope="module")
def networks():
    return tiny_networks()


@pytest.fixture(scope="module")
def eager(networks):
    return TorchDenoiser.from_networks(networks)


@pytest.fixture(scope="module")
def resident(networks):
    """The runtime's device-resident path without compiling (fast): tensors out, any batch."""
    return CompiledTorchDenoiser.from_networks(networks, "cpu", SIZE, compile=False,
                                               batch_sizes=(1, 2))


@pytest.fixture(scope="module")
def compiled(networks, tmp_path_factory):
    """Compiled for real on the CPU (inductor's C++ backend): two roles at batches 1 and 2."""
    nets = {r: networks[r] for r in ("predictor", "projector")}
    den = CompiledTorchDenoiser.from_networks(nets, "cpu", SIZE, batch_sizes=(1, 2),
                                              cache_dir=torch_compiled.default_cache_dir())
    if den.fallback:
        pytest.skip(f"torch.compile cannot run on this machine: {den.fallback}")
    return den


def step_inputs(batch: int, role: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    h, w = SIZE
    cond_channels = {"predictor": 3, "projector": 0, "interpolator": 6}[role]
    x = rng.standard_normal((batch, 3, h, w), dtype=np.float32)
    cond = rng.standard_normal((batch, cond_channels, h, w), dtype=np.float32) if cond_channels else None
    t = rng.integers(1, 50, batch).astype(np.float32)
    k = np.ones(batch, np.float32)
    coef = rng.uniform(-1, 1, (batch, 5)).astype(np.float32)
    noise = rng.standard_normal((batch, 3, h, w), dtype=np.float32)
    return x, cond, t, k, coef, noise


def test_compiled_step_matches_eager(compiled, eager):
    assert compiled.compiled and set(compiled.compile_seconds) == {
        (r, b, *SIZE) for r in ("predictor", "projector") for b in (1, 2)}
    for role in ("predictor", "projector"):
        for batch in (1, 2, 3):  # 3: a captured batch (2) and a padded one (1 -> chunk of its own)
            inputs = step_inputs(batch, role, seed=batch)
            got = compiled(role, *inputs)
            assert isinstance(got, torch.Tensor) and got.shape == (batch, 3, *SIZE)
            np.testing.assert_allclose(got.numpy(), eager(role, *inputs), atol=2e-4, rtol=0)


def test_eager_runtime_takes_device_tensors_as_well_as_arrays(resident, eager):
    """The eager fp32 runtime (torch-cuda-eager, the reference) is fed what a device-resident loop
    holds: tensors, e.g. the compiled runtime's last output. It must not route them through numpy,
    which fails for CUDA tensors; the result is the same host array."""
    for role in ("predictor", "projector"):
        inputs = step_inputs(2, role, seed=7)
        x = resident(role, *inputs)  # a tensor, as the loop carries it
        as_tensors = [None if a is None else torch.from_numpy(a) for a in inputs[1:]]
        got = eager(role, x, *as_tensors)
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, eager(role, x.numpy(), *inputs[1:]))


def test_compiled_frames_match_eager_alone_and_batched(compiled, eager):
    sampling = sampling_facts(("predictor", "projector"))
    start = np.random.default_rng(3).uniform(-1, 1, (3, *SIZE)).astype(np.float32)
    ref = [f.image for f in run(extrapolate(sampling, start, 2, 1, np.random.default_rng(7), DDPM), eager)]
    alone = [f.image for f in run(extrapolate(sampling, start, 2, 1, np.random.default_rng(7), DDPM),
                                  compiled)]
    for a, b in zip(alone, ref):
        assert isinstance(a, np.ndarray)  # Stepper brought the frame to the host
        np.testing.assert_allclose(a, b, atol=1e-3)
    loops = [extrapolate(sampling, start, 2, 1, np.random.default_rng(s), DDPM) for s in (7, 8, 9)]
    batched = {}
    for i, frame in lockstep(loops, compiled):
        batched.setdefault(i, []).append(frame.image)
    for a, b in zip(batched[0], ref):  # seed 7 in a batch of 3 (2 + 1 padded) = seed 7 alone
        np.testing.assert_allclose(a, b, atol=1e-3)


def test_resident_loop_keeps_tensors_and_matches_numpy(resident, eager):
    """The device-resident loop: each step's output goes back in as a tensor; the frames and the
    random draws equal the numpy runtime's (DDPM draws noise at every step, correction included)."""
    sampling = sampling_facts(("predictor", "projector"))
    start = np.random.default_rng(4).uniform(-1, 1, (3, *SIZE)).astype(np.float32)
    seen = []

    def spy(role, x, cond, t, k, coef, noise):
        seen.append((role, arrays.is_host(x), cond is not None and arrays.is_host(cond)))
        return resident(role, x, cond, t, k, coef, noise)

    rng_a, rng_b = np.random.default_rng(11), np.random.default_rng(11)
    ours = [f.image for f in run(extrapolate(sampling, start, 3, 1, rng_a, DDPM), spy)]
    theirs = [f.image for f in run(extrapolate(sampling, start, 3, 1, rng_b, DDPM), eager)]
    # Host arrays go in only where a frame starts from fresh noise (the Predictor's first step) and
    # as the first frame's condition (the client's start frame); every other x is the last output.
    predictor_starts = [i for i, (role, _, _) in enumerate(seen)
                        if role == "predictor" and (i == 0 or seen[i - 1][0] == "projector")]
    assert predictor_starts == [0, 6, 12] and len(seen) == 3 * (4 + 2)  # DDPM 4 + 2 correction
    assert [i for i, (_, host_x, _) in enumerate(seen) if host_x] == predictor_starts
    assert [i for i, (_, _, host_cond) in enumerate(seen) if host_cond] == [0, 1, 2, 3]
    for a, b in zip(ours, theirs):
        # the correction's colour keep rescales a random network's frame to the start frame's
        # colours, which carries the float rounding of the steps on (a few pixels at 3e-4 to 8e-4,
        # by the numpy build; the compiled runtime's test allows 1e-3 too)
        np.testing.assert_allclose(a, b, atol=1e-3)
    assert rng_a.bit_generator.state == rng_b.bit_generator.state  # the same draws, no more


def test_a_predictor_margin_runs_prepared_on_the_predictors_canvas(networks, eager):
    """Each role is prepared at the sizes its steps take: with a margin, the Predictor's canvas (the
    frame padded on the device, then cut back), and the frame and that canvas for a Projector that
    corrects coarsely; the frames, held to the start frame's layout or to the clip's on the
    device, equal the numpy runtime's."""
    nets = {r: networks[r] for r in ("predictor", "projector")}
    canvas = (SIZE[0] + 4, SIZE[1] + 4)
    sizes = {"predictor": canvas, "projector": [SIZE, canvas]}  # and the coarse correction's
    den = CompiledTorchDenoiser.from_networks(nets, "cpu", sizes, compile=False, batch_sizes=(1,))
    assert den.describe()["size"] == "24x16, 28x20"
    assert {(role, tuple(p.inputs["x"].shape[-2:])) for (role, *_), p in den._prepared.items()} == {
        ("predictor", canvas), ("projector", SIZE), ("projector", canvas)}
    sampling = sampling_facts(("predictor", "projector"))
    sampling = BundleSampling(sampling.roles, predictor_margin=2, coarse_correction_level=3,
                              coarse_correction_weight=0.25, layout_pull=0.2, layout_sigma=1.5,
                              layout_weights=np.linspace(0, 0.2, SIZE[0] * SIZE[1],
                                                         dtype=np.float32).reshape(SIZE))
    start = np.random.default_rng(4).uniform(-1, 1, (3, *SIZE)).astype(np.float32)
    clip = np.random.default_rng(5).uniform(-1, 1, (4, 3, *SIZE)).astype(np.float32)
    for held in (sampling, replace(sampling, layout_window=1, clip_layouts=clip)):
        ours = [f.image for f in run(extrapolate(held, start, 2, 1, np.random.default_rng(3), FAST), den)]
        theirs = [f.image for f in run(extrapolate(held, start, 2, 1, np.random.default_rng(3), FAST), eager)]
        assert [f.shape for f in ours] == [(3, *SIZE)] * 2
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, atol=5e-4)


def test_resident_upsampling_mixes_host_and_device_frames(resident, eager):
    """The Interpolator's condition joins a client frame (numpy) and a made one (a tensor)."""
    sampling = sampling_facts()
    frames = [np.random.default_rng(s).uniform(-1, 1, (3, *SIZE)).astype(np.float32) for s in (1, 2)]
    ours = [f.image for f in run(upsample(sampling, frames, 4, np.random.default_rng(5), FAST), resident)]
    theirs = [f.image for f in run(upsample(sampling, frames, 4, np.random.default_rng(5), FAST), eager)]
    assert len(ours) == len(theirs) == 5
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_other_frame_sizes_run_eagerly(resident, eager):
    x, cond, t, k, coef, noise = step_inputs(2, "projector")
    small = [a[..., :8, :12] if a is not None and a.ndim == 4 else a for a in (x, cond, t, k, coef, noise)]
    np.testing.assert_allclose(resident("projector", *small).numpy(), eager("projector", *small),
                               atol=1e-5)
    with pytest.raises(KeyError, match="no nothing loaded"):
        resident("nothing", x, cond, t, k, coef, noise)


def test_run_requests_keeps_device_rows(resident):
    x, cond, t, k, coef, noise = step_inputs(2, "predictor")
    reqs = [StepRequest("predictor", torch.from_numpy(x[i]), cond[i], float(t[i]), 1.0, coef[i], noise[i])
            for i in range(2)]
    rows = run_requests(resident, reqs)
    assert all(isinstance(r, torch.Tensor) and r.shape == (3, *SIZE) for r in rows)


def test_arrays_helpers_agree_for_numpy_and_tensors():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1.2, 1.2, (2, 3, 5, 7)).astype(np.float32)
    assert np.array_equal(arrays.to_uint8(torch.from_numpy(a)), to_uint8(a))
    mixed = arrays.concat([a[0], torch.from_numpy(a[1])])
    assert isinstance(mixed, torch.Tensor) and np.array_equal(mixed.numpy(), np.concatenate(a))
    assert isinstance(arrays.stack([a[0], a[1]]), np.ndarray)
    assert np.array_equal(arrays.to_host(arrays.stack([torch.from_numpy(a[0]), a[1]])), a)


def test_scheduler_sends_the_same_bytes_as_torch_cpu(tmp_path, resident):
    """The server path: frames become uint8 where they are (arrays.to_uint8) and match torch-cpu's."""
    from sinfusion.server.runtimes import LoadedRuntime
    from sinfusion.server.scheduler import Scheduler
    from tests.conftest import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "tiny", roles=("predictor", "projector"))
    start = to_model(bundle.frames()[0])
    runtimes = {"torch-cpu": TorchDenoiser(bundle),
                "resident": CompiledTorchDenoiser(bundle, "cpu", compile=False, batch_sizes=(1, 2))}

    async def stream(denoiser):
        sizes = {r: (1, 2) for r in bundle.roles}
        scheduler = Scheduler("tiny", LoadedRuntime("x", denoiser, sizes))
        scheduler.start()
        jobs = [scheduler.submit(extrapolate(bundle.sampling(), start, 2, 1, np.random.default_rng(s),
                                             FAST)) for s in (1, 2, 3)]
        out = [[f.rgb async for f in job.frames()] for job in jobs]
        await scheduler.close()
        return out

    got = {name: asyncio.run(stream(den)) for name, den in runtimes.items()}
    for ours, theirs in zip(got["resident"], got["torch-cpu"]):
        for a, b in zip(ours, theirs):
            diff = np.abs(np.frombuffer(a, np.uint8).astype(int) - np.frombuffer(b, np.uint8))
            assert diff.max() <= 1  # float rounding may move a pixel across a level


def test_compile_failure_falls_back_to_eager_with_a_warning(networks, eager, monkeypatch, caplog):
    def broken(step, **kwargs):
        def run(**inputs):
            raise RuntimeError("no C++ compiler\nmore lines")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level(logging.WARNING, logger="sinfusion.runtimes"):
        den = CompiledTorchDenoiser.from_networks({"projector": networks["projector"]}, "cpu", SIZE,
                                                  batch_sizes=(1,))
    assert den.fallback == "RuntimeError: no C++ compiler" and not den.compiled
    assert "torch.compile is unavailable here (RuntimeError: no C++ compiler)" in caplog.text
    inputs = step_inputs(1, "projector")
    np.testing.assert_allclose(den("projector", *inputs).numpy(), eager("projector", *inputs), atol=1e-5)


def test_cache_dir_is_persistent_and_overridable(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert use_cache_dir() == tmp_path / "xdg" / "sinfusion" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "theirs"))
    assert use_cache_dir() == tmp_path / "theirs"  # the user's setting wins over our default
    assert use_cache_dir(tmp_path / "named") == tmp_path / "named"
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "named") and (tmp_path / "named").is_dir()


def test_options_are_checked(networks):
    with pytest.raises(ValueError, match="precision must be one of"):
        CompiledTorchDenoiser.from_networks(networks, "cpu", SIZE, precision="int8", compile=False)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        CompiledTorchDenoiser.from_networks(networks, "cpu", SIZE, cuda_graphs=True, compile=False)


def test_server_registers_torch_cuda_and_its_batches(tiny_bundle):
    from sinfusion.server.config import ConfigError, RUNTIME_CHOICES
    from sinfusion.server.runtimes import compiled_batch_sizes, select_runtime

    assert compiled_batch_sizes(8) == (1, 2, 4, 8) and compiled_batch_sizes(6) == (1, 2, 4, 6)
    assert compiled_batch_sizes(1) == (1,)
    assert {"torch-cuda", "torch-cuda-eager"} <= set(RUNTIME_CHOICES)
    if not torch.cuda.is_available():
        for name in ("torch-cuda", "torch-cuda-eager"):
            with pytest.raises(ConfigError, match=f"{name}: no CUDA device"):
                select_runtime(tiny_bundle, name, 4)


@cuda_only
def test_cuda_graphs_bf16_match_eager_fp32(networks):
    """On a GPU: bf16, channels-last, compiled, graph-replayed steps within bf16's error of fp32."""
    nets = {r: networks[r] for r in ("predictor", "projector")}
    fast = CompiledTorchDenoiser.from_networks(nets, "cuda", SIZE, batch_sizes=(1, 2))
    ref = TorchDenoiser.from_networks(nets, device="cuda")
    assert fast.cuda_graphs and fast.precision in ("bf16", "fp16")
    for batch in (1, 2, 3):
        inputs = step_inputs(batch, "predictor", seed=batch)
        got = fast("predictor", *inputs)
        assert got.device.type == "cuda"
        np.testing.assert_allclose(got.cpu().numpy(), ref("predictor", *inputs), atol=0.1)
