"""The gRPC server end to end: a real server on a loopback port, tiny bundles, the generated stubs.

Every RPC, order and count of frames, seeded reproducibility alone vs batched, health, reflection
and metrics. Errors, limits and cancellation: test_server_errors.py; auth/TLS/CLI: their own files.
Sampling is DDIM with 2 steps and 1 correction step wherever the test is not about the defaults.
"""

from __future__ import annotations

import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sinfusion import sampling
from sinfusion.frames import to_model, to_uint8
from sinfusion.v1 import sinfusion_pb2 as pb
from sinfusion.bundle import Bundle
from tests.conftest import make_tiny_bundle, pixels, raw, serve, tiny_clip

H, W = 16, 24


def fast(seed: int | None = None, **kw) -> pb.SamplingParams:
    params = pb.SamplingParams(steps=2, method=pb.SAMPLING_METHOD_DDIM, correction_steps=1, **kw)
    if seed is not None:
        params.seed = seed
    return params


@pytest.fixture(scope="module")
def server_settings() -> dict:
    return {"metrics_port": 0, "grace": 1.0}


def assert_core_frames(served: list[np.ndarray], model, loop: sampling.Loop) -> None:
    """The served frames are the core loop's, run alone on the model's runtime (batch 1, as the
    server ran a lone stream): equal up to the rounding of the conversion to uint8."""
    local = [to_uint8(f.image) for f in sampling.run(loop, model.runtime.denoiser)]
    assert len(served) == len(local)
    for a, b in zip(served, local):
        assert np.abs(a.astype(int) - b).max() <= 1


def test_list_and_describe(stub):
    models = stub.ListModels(pb.ListModelsRequest()).models
    assert [m.name for m in models] == ["still", "tiny"]
    info = stub.DescribeModel(pb.DescribeModelRequest(model="tiny"))
    assert (info.width, info.height, info.frame_count, info.fps) == (W, H, 8, 12.0)
    assert list(info.capabilities) == ["extrapolate", "generate", "upsample"]
    assert info.runtime == "torch-cpu" and info.schedule_steps == 50 and info.max_step == 3
    assert list(info.roles) == ["predictor", "projector", "interpolator"]
    assert info.default_correction_steps == 3 and list(info.batch_sizes) == list(range(1, 9))
    assert info.correction_weight == 1.0  # set: a server before the field sends 0 (clients read 1)
    assert info.correction_passes == 1 and info.predictor_margin == 0
    assert (info.coarse_correction_level, info.coarse_correction_weight) == (0, 1.0)
    assert (info.layout_pull, info.layout_sigma) == (0.0, 0.0)  # the paper's: none
    still = stub.DescribeModel(pb.DescribeModelRequest(model="still"))
    assert list(still.capabilities) == ["generate"]


@pytest.mark.parametrize("step", [1, -2, 3])
def test_extrapolate_streams_frames_in_order(stub, step):
    frames = list(stub.Extrapolate(pb.ExtrapolateRequest(model="tiny", frames=4, step=step,
                                                         start_frame=2, sampling=fast(seed=1))))
    assert [f.index for f in frames] == [0, 1, 2, 3]
    for f in frames:
        assert (f.width, f.height, f.synthesized, f.resized) == (W, H, True, False)
        pixels(f)


def test_a_model_holding_its_streams_layout_says_so_and_serves_the_core_loop(tmp_path):
    """DescribeModel reports the manifest's layout hold, and an Extrapolate stream's frames are the
    core loop's with it (each held to the start frame's layout)."""
    bundle = make_tiny_bundle(tmp_path / "models" / "held")
    bundle.manifest.layout_pull, bundle.manifest.layout_sigma = 0.3, 1.5
    bundle.save_manifest()
    with serve(tmp_path / "models", grace=0.5) as (running, stub):
        info = stub.DescribeModel(pb.DescribeModelRequest(model="held"))
        assert (info.layout_pull, info.layout_sigma, info.layout_window) == (0.3, 1.5, 0)
        served = [pixels(f) for f in stub.Extrapolate(pb.ExtrapolateRequest(
            model="held", frames=3, start_frame=1, sampling=fast(seed=4)))]
        model = running.models["held"]
        assert model.sampling.layout_pull == 0.3
        start = to_model(Bundle.open(bundle.path).frames()[1])
        assert_core_frames(served, model, sampling.extrapolate(
            model.sampling, start, 3, 1, np.random.default_rng(4),
            sampling.SamplingOptions(steps=2, method="ddim", correction_steps=1)))


def test_extrapolate_from_client_frame_resizes_or_not(stub):
    clip = tiny_clip(2, H, W)
    same = list(stub.Extrapolate(pb.ExtrapolateRequest(model="tiny", frames=2, start_image=raw(clip[0]),
                                                       sampling=fast(seed=2))))
    assert [f.resized for f in same] == [False, False]
    big = np.repeat(np.repeat(clip[0], 2, axis=0), 2, axis=1)  # 48x32: resized to 24x16
    resized = list(stub.Extrapolate(pb.ExtrapolateRequest(model="tiny", frames=2, start_image=raw(big),
                                                          sampling=fast(seed=2))))
    assert [(f.resized, f.width, f.height) for f in resized] == [(True, W, H), (True, W, H)]


def test_generate_streams_a_new_clip(stub):
    frames = list(stub.Generate(pb.GenerateRequest(model="tiny", frames=3, sampling=fast(seed=3))))
    assert [(f.index, f.synthesized) for f in frames] == [(0, True), (1, True), (2, True)]
    one = list(stub.Generate(pb.GenerateRequest(model="still", frames=1, sampling=fast(seed=3))))
    assert len(one) == 1


def test_default_sampling_parameters_work(stub, running):
    """An empty SamplingParams: DDIM with its default steps, the bundle's default 3 correction steps;
    DDPM without steps: all 50 steps (the paper's sampler)."""
    frames = list(stub.Extrapolate(pb.ExtrapolateRequest(model="tiny", frames=1)))
    assert len(frames) == 1
    model = running.models["tiny"]
    # Only a seed (and the method) set: the frames are the core loop's with those defaults.
    for params, defaults in [
        (pb.SamplingParams(seed=11), sampling.SamplingOptions(sampling.DEFAULT_DDIM_STEPS, "ddim", 3)),
        (pb.SamplingParams(seed=11, method=pb.SAMPLING_METHOD_DDPM), sampling.PAPER_SAMPLING),
    ]:
        served = [pixels(f) for f in stub.Extrapolate(pb.ExtrapolateRequest(model="tiny", frames=2,
                                                                            sampling=params))]
        loop = sampling.extrapolate(model.sampling, to_model(model.clip[0]), 2, 1,
                                    np.random.default_rng(11), defaults)
        assert len(served) == 2
        assert_core_frames(served, model, loop)
    # A video's Generate starts from a clip frame the Projector varies and extrapolates from it:
    # Extrapolate's defaults.
    served = [pixels(f) for f in stub.Generate(pb.GenerateRequest(
        model="tiny", frames=2, sampling=pb.SamplingParams(seed=11)))]
    loop = sampling.generate(model.sampling, model.size, 2, np.random.default_rng(11),
                             sampling.SamplingOptions(sampling.DEFAULT_DDIM_STEPS, "ddim", 3),
                             clip=model.clip)
    assert_core_frames(served, model, loop)


def test_an_image_model_generates_from_noise_with_the_papers_sampler(tmp_path):
    """A single image's Generate draws from noise with the Projector: the paper's DDPM, painted with
    the image's palette, as the core loop does with the bundle's."""
    make_tiny_bundle(tmp_path / "models" / "image", roles=("projector",), mode="image")
    with serve(tmp_path / "models", grace=0.5) as (running, stub):
        image = running.models["image"]
        assert image.sampling.palette is not None
        assert image.sampling.palette == image.bundle.manifest.palette
        served = [pixels(f) for f in stub.Generate(pb.GenerateRequest(
            model="image", frames=1, sampling=pb.SamplingParams(seed=11)))]
        loop = sampling.generate(image.sampling, image.size, 1, np.random.default_rng(11),
                                 sampling.SamplingOptions(0, "ddpm", 3))
        assert_core_frames(served, image, loop)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_upsample_interleaves_originals_and_new_frames(stub, factor):
    clip = tiny_clip(3, H, W)
    requests = [pb.UpsampleRequest(model="tiny", factor=factor, sampling=fast(seed=4), frame=raw(clip[0]))]
    requests += [pb.UpsampleRequest(frame=raw(c)) for c in clip[1:]]
    frames = list(stub.Upsample(iter(requests)))
    assert [f.index for f in frames] == list(range(2 * factor + 1))
    originals = [f for f in frames if not f.synthesized]
    assert [f.index for f in originals] == [0, factor, 2 * factor]
    for f, c in zip(originals, clip):
        np.testing.assert_array_equal(pixels(f), c)  # passed through untouched
    assert all(f.synthesized for f in frames if f.index % factor)


def test_upsample_is_the_core_loop(stub, running):
    """The servicer has no upsampling of its own: its frames are sinfusion.sampling.upsample's."""
    clip = tiny_clip(3, H, W)
    requests = [pb.UpsampleRequest(model="tiny", factor=2, sampling=fast(seed=8), frame=raw(clip[0]))]
    requests += [pb.UpsampleRequest(frame=raw(c)) for c in clip[1:]]
    served = [pixels(f) for f in stub.Upsample(iter(requests))]
    model = running.models["tiny"]
    loop = sampling.upsample(model.sampling, list(to_model(clip)), 2, np.random.default_rng(8),
                             sampling.SamplingOptions(2, "ddim", 1))
    assert len(served) == 5
    assert_core_frames(served, model, loop)
    # unset, the correction is off for in-between frames (nothing accumulates), whatever the bundle's
    requests[0] = pb.UpsampleRequest(model="tiny", factor=2, sampling=pb.SamplingParams(seed=8),
                                     frame=raw(clip[0]))
    served = [pixels(f) for f in stub.Upsample(iter(requests))]
    assert model.bundle.manifest.correction_steps == 3
    loop = sampling.upsample(model.sampling, list(to_model(clip)), 2, np.random.default_rng(8),
                             sampling.SamplingOptions(sampling.DEFAULT_DDIM_STEPS, "ddim", 0))
    assert_core_frames(served, model, loop)


def test_upsample_output_starts_before_input_ends(stub):
    clip = tiny_clip(3, H, W)
    first_new = threading.Event()

    def requests():
        yield pb.UpsampleRequest(model="tiny", factor=2, sampling=fast(seed=5), frame=raw(clip[0]))
        yield pb.UpsampleRequest(frame=raw(clip[1]))
        # The third frame is only sent once the in-between of the first pair came back.
        assert first_new.wait(30), "no interpolated frame before the input ended"
        yield pb.UpsampleRequest(frame=raw(clip[2]))

    got = []
    for f in stub.Upsample(requests()):
        got.append(f)
        if f.synthesized:
            first_new.set()
    assert [f.index for f in got] == [0, 1, 2, 3, 4]


def test_upsample_resizes_client_frames(stub):
    clip = tiny_clip(2, 20, 30)
    requests = [pb.UpsampleRequest(model="tiny", factor=2, sampling=fast(seed=6))]
    requests += [pb.UpsampleRequest(frame=raw(c)) for c in clip]
    frames = list(stub.Upsample(iter(requests)))
    assert [(f.resized, f.width, f.height) for f in frames] == [(True, W, H)] * 3


def extrapolate_bytes(stub, seed: int, frames: int = 3) -> list[bytes]:
    request = pb.ExtrapolateRequest(model="tiny", frames=frames, sampling=fast(seed=seed))
    return [f.rgb for f in stub.Extrapolate(request)]


def batched_runs(stub, seed: int, others: int = 5) -> list[bytes]:
    """The seeded stream running with `others` concurrent streams of other seeds."""
    with ThreadPoolExecutor(others + 1) as pool:
        futures = [pool.submit(extrapolate_bytes, stub, 1000 + i, 6) for i in range(others)]
        target = pool.submit(extrapolate_bytes, stub, seed)
        [f.result() for f in futures]
        return target.result()


def shared_calls(running) -> float:
    """Predictor engine calls so far that carried more than one stream."""
    registry = running.service.metrics.registry
    labels = {"model": "tiny", "role": "predictor"}
    total = registry.get_sample_value("sinfusion_batch_size_count", labels) or 0.0
    single = registry.get_sample_value("sinfusion_batch_size_bucket", {**labels, "le": "1.0"}) or 0.0
    return total - single


def test_seeded_streams_repeat_and_differ_by_seed(stub):
    a, b = extrapolate_bytes(stub, 7), extrapolate_bytes(stub, 7)
    assert a == b
    assert extrapolate_bytes(stub, 8) != a


def test_seeded_stream_same_alone_or_batched_within_rounding(stub, running):
    """Default batching: the same random draws, so frames agree up to float rounding of batched kernels."""
    alone = extrapolate_bytes(stub, 11)
    before = shared_calls(running)
    batched = batched_runs(stub, 11)
    assert shared_calls(running) > before, "the concurrent streams were never batched together"
    for x, y in zip(alone, batched):
        diff = np.abs(np.frombuffer(x, np.uint8).astype(int) - np.frombuffer(y, np.uint8))
        assert diff.max() <= 2 and diff.mean() < 0.05


def test_seeded_stream_bit_identical_with_fixed_batch(models_dir):
    with serve(models_dir, fixed_batch=True, max_batch=4, grace=1.0) as (running, stub):
        alone = extrapolate_bytes(stub, 12)
        before = shared_calls(running)
        assert batched_runs(stub, 12, others=3) == alone
        assert shared_calls(running) > before


def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "sinfusion.v1.SinFusion"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(reflection.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="sinfusion.v1.SinFusion"),
    ])))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"sinfusion.v1.SinFusion", "grpc.health.v1.Health"} <= names
    assert replies[1].file_descriptor_response.file_descriptor_proto


def test_metrics_endpoint(stub, running):
    list(stub.Generate(pb.GenerateRequest(model="tiny", frames=2, sampling=fast(seed=9))))
    text = urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=10).read()
    text = text.decode()
    for name in ("sinfusion_frames_total", "sinfusion_rpc_seconds_bucket", "sinfusion_first_frame_seconds",
                 "sinfusion_live_streams", "sinfusion_batch_size", "sinfusion_engine_seconds"):
        assert name in text
    assert 'sinfusion_frames_total{model="tiny",rpc="Generate",synthesized="true"}' in text
