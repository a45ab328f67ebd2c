"""Hostile input, stalled clients and damaged bundles against a real server on loopback.

Malformed bytes on every RPC (hand-picked cases and a hypothesis fuzz), names of any length, a
client that stops reading, bundles with damaged files next to good ones, and the drain on shutdown.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sinfusion.bundle import FRAMES, MANIFEST, Bundle, IntegrityError
from sinfusion.server import ServerConfig
from sinfusion.server.background import BackgroundServer
from sinfusion.server.config import ConfigError
from sinfusion.server.scheduler import RUNAHEAD
from sinfusion.v1 import sinfusion_pb2 as pb
from sinfusion.v1 import sinfusion_pb2_grpc as pb_grpc
from tests.conftest import bundles_folder, make_tiny_bundle, serve, tiny_clip

H, W = 16, 24
SERVICE = "/sinfusion.v1.SinFusion/"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def damage(path, offset_fraction: float = 0.6) -> None:
    """Flip a few bytes in the middle of a file, keeping its size (a damaged disk, not a truncation)."""
    data = bytearray(path.read_bytes())
    at = int(len(data) * offset_fraction)
    data[at:at + 4] = bytes(b ^ 0xFF for b in data[at:at + 4])
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = bundles_folder(tmp_path_factory.mktemp("models"), tiny={}, clouds={"seed": 1})
    damage(root / "clouds" / FRAMES)
    (root / "junk").mkdir()
    (root / "junk" / MANIFEST).write_text("{ not json")
    return root


@pytest.fixture(scope="module")
def server_settings() -> dict:
    return {"max_frames": 2, "max_message_bytes": 64 << 10, "grace": 0.5}


def raw_call(channel, method: str, payloads: list[bytes], timeout: float = 20.0):
    """Call any RPC with raw request bytes; returns (status code, details, responses)."""
    kind = {"ListModels": "uu", "DescribeModel": "uu", "Extrapolate": "us", "Generate": "us",
            "Upsample": "ss"}.get(method.rsplit("/", 1)[-1], "uu")
    path = method if method.startswith("/") else SERVICE + method
    try:
        if kind == "uu":
            return grpc.StatusCode.OK, "", [channel.unary_unary(path)(payloads[0], timeout=timeout)]
        if kind == "us":
            return grpc.StatusCode.OK, "", list(channel.unary_stream(path)(payloads[0], timeout=timeout))
        return grpc.StatusCode.OK, "", list(channel.stream_stream(path)(iter(payloads), timeout=timeout))
    except grpc.RpcError as error:
        return error.code(), error.details() or "", []


MALFORMED = [
    ("DescribeModel", [b"\x10\xff"], "malformed DescribeModelRequest: field 2 (unknown) at byte 0 is cut off"),
    ("ListModels", [b"\xff"], "malformed ListModelsRequest: the tag at byte 0 is cut off"),
    ("Extrapolate", [b"\x0a\x05ab"], "malformed ExtrapolateRequest: model at byte 0 says 5 bytes but only 2"),
    ("Extrapolate", [b"\x2a\x03\x1a\x05a"],
     "malformed ExtrapolateRequest: start_image.rgb at byte 2 says 5 bytes but only 1 follow"),
    ("Generate", [b"\x0a\x02\xff\xfe"], "malformed GenerateRequest: model at byte 0 is not valid UTF-8"),
    ("Generate", [b"\x0f"], "malformed GenerateRequest: model at byte 0 has wire type 7"),
    ("Generate", [b"\x08" + b"\xff" * 11], "malformed GenerateRequest: model at byte 0 is longer than 10"),
    ("Upsample", [b"\x0a\x04tiny\x10\x02\x2a\x01"], "malformed UpsampleRequest: frame at byte 8 says"),
    ("/grpc.health.v1.Health/Check", [b"\xff"], "malformed HealthCheckRequest"),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", [b"\x1a\x09ab"],
     "malformed ServerReflectionRequest"),
]


@pytest.mark.parametrize("method, payloads, message", MALFORMED, ids=[f"{m[0]}-{i}" for i, m in enumerate(MALFORMED)])
def test_malformed_bytes_are_invalid_argument_naming_the_field(channel, caplog, method, payloads, message):
    caplog.set_level(logging.INFO, logger="sinfusion.server")
    code, details, _ = raw_call(channel, method, payloads)
    assert code == INVALID, details
    assert message in details
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_malformed_message_later_in_an_upsample_stream(channel):
    frame = pb.RawFrame(width=W, height=H, rgb=tiny_clip(1, H, W)[0].tobytes())
    first = pb.UpsampleRequest(model="tiny", factor=2, frame=frame,
                               sampling=pb.SamplingParams(steps=1, method=pb.SAMPLING_METHOD_DDIM))
    code, details, _ = raw_call(channel, "Upsample", [first.SerializeToString(), b"\x2a\x05\x08"])
    assert code == INVALID and "malformed UpsampleRequest: frame at byte 0" in details


# --- fuzz -----------------------------------------------------------------------------------------

METHODS = ("ListModels", "DescribeModel", "Extrapolate", "Generate", "Upsample",
           "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/List",
           "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
NAMES = st.sampled_from(["tiny", "clouds", "junk", "", "nope", "t" * 300])
SMALL = st.integers(0, 3)


def sampling_params() -> st.SearchStrategy:
    return st.builds(pb.SamplingParams, steps=SMALL, method=st.integers(0, 3),
                     correction_steps=st.integers(0, 2), seed=st.integers(0, 2**64 - 1))


def raw_frames() -> st.SearchStrategy:
    return st.one_of(
        st.builds(pb.RawFrame, width=st.integers(0, 30), height=st.integers(0, 20),
                  rgb=st.binary(max_size=64)),
        st.just(pb.RawFrame(width=W, height=H, rgb=bytes(W * H * 3))))


def well_formed(method: str) -> st.SearchStrategy:
    if method == "DescribeModel":
        return st.builds(pb.DescribeModelRequest, model=NAMES)
    if method == "Extrapolate":
        return st.builds(pb.ExtrapolateRequest, model=NAMES, frames=SMALL, step=st.integers(-5, 5),
                         start_image=st.one_of(st.none(), raw_frames()), resize=st.integers(0, 3),
                         sampling=sampling_params())
    if method == "Generate":
        return st.builds(pb.GenerateRequest, model=NAMES, frames=SMALL, sampling=sampling_params())
    if method == "Upsample":
        return st.builds(pb.UpsampleRequest, model=NAMES, factor=st.integers(0, 9),
                         resize=st.integers(0, 3), sampling=sampling_params(),
                         frame=st.one_of(st.none(), raw_frames()))
    if method.endswith("ServerReflectionInfo"):
        return st.builds(reflection_pb2.ServerReflectionRequest,
                         list_services=st.one_of(st.none(), st.just("")),
                         file_containing_symbol=st.one_of(st.none(), st.sampled_from(
                             ["sinfusion.v1.SinFusion", "grpc.reflection.v1.ServerReflection", "x"])))
    if method.endswith("Check"):
        return st.builds(health_pb2.HealthCheckRequest, service=st.text(max_size=40))
    return st.just(pb.ListModelsRequest())


@st.composite
def payload(draw, method: str) -> bytes:
    """Well-formed bytes, the same mutated (cut, flipped, spliced), or any bytes at all."""
    how = draw(st.sampled_from(["valid", "cut", "flip", "splice", "random"]))
    if how == "random":
        return draw(st.binary(max_size=200))
    data = draw(well_formed(method)).SerializeToString()
    if how == "cut" and data:
        return data[:draw(st.integers(0, len(data) - 1))]
    if how == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    if how == "splice":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    return data


@st.composite
def fuzz_call(draw) -> tuple[str, list[bytes]]:
    method = draw(st.sampled_from(METHODS))
    count = draw(st.integers(1, 3)) if method in ("Upsample",) or method.endswith("Info") else 1
    return method, [draw(payload(method)) for _ in range(count)]


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(call=fuzz_call())
def test_fuzz_every_rpc_never_unknown_or_internal(channel, call):
    method, payloads = call
    code, details, responses = raw_call(channel, method, payloads)
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (method, payloads, details)
    assert len(details) < 1000
    if code == grpc.StatusCode.OK and method in ("Extrapolate", "Generate", "Upsample"):
        frames = [pb.Frame.FromString(r) for r in responses]
        assert [f.index for f in frames] == list(range(len(frames)))
        assert all(len(f.rgb) == f.width * f.height * 3 for f in frames)


def test_server_still_serves_after_the_fuzz(stub):
    assert [m.name for m in stub.ListModels(pb.ListModelsRequest()).models] == ["tiny"]
    frames = list(stub.Generate(pb.GenerateRequest(model="tiny", frames=2, sampling=pb.SamplingParams(
        steps=1, method=pb.SAMPLING_METHOD_DDIM, seed=3))))
    assert [f.index for f in frames] == [0, 1]


# --- names ----------------------------------------------------------------------------------------

def test_long_names_are_refused_or_cut_never_echoed_whole(stub, caplog):
    caplog.set_level(logging.INFO, logger="sinfusion.server")
    for length, code, message in ((20_000, INVALID, "model must be at most 256 characters, got 20000"),
                                  (200, grpc.StatusCode.NOT_FOUND, "... (200 characters) not found")):
        with pytest.raises(grpc.RpcError) as info:
            stub.DescribeModel(pb.DescribeModelRequest(model="x" * length))
        assert info.value.code() == code and message in info.value.details()
        assert len(info.value.details()) < 300
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Extrapolate(pb.ExtrapolateRequest(model="y\n" * (length // 2), frames=1)))
        assert info.value.code() == code and len(info.value.details()) < 300
    assert max(len(r.getMessage()) for r in caplog.records) < 500
    assert "\ny" not in caplog.text  # newlines a client sends cannot forge log lines


# --- damaged and refused bundles ------------------------------------------------------------------

def test_refused_bundles_are_reported_and_the_rest_served(running, channel, stub, caplog):
    assert [r.name for r in running.refused] == ["clouds", "junk"]
    with pytest.raises(grpc.RpcError) as info:
        stub.DescribeModel(pb.DescribeModelRequest(model="clouds"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ("model 'clouds' is not served: its bundle was refused at startup (clouds/frames.safetensors: "
            "checksum mismatch") in info.value.details()
    assert str(running.refused[0].path.parent) not in info.value.details()  # no server paths
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Generate(pb.GenerateRequest(model="junk", frames=1)))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "not valid JSON" in info.value.details()
    health = health_pb2_grpc.HealthStub(channel)
    statuses = health.List(health_pb2.HealthListRequest()).statuses
    assert {n: s.status for n, s in statuses.items()} == {
        "": SERVING, "sinfusion.v1.SinFusion": SERVING, "sinfusion.v1.SinFusion/tiny": SERVING,
        "sinfusion.v1.SinFusion/clouds": NOT_SERVING, "sinfusion.v1.SinFusion/junk": NOT_SERVING}
    registry = running.service.metrics.registry
    assert registry.get_sample_value("sinfusion_bundles", {"state": "refused"}) == 2


def test_refused_bundles_are_logged_and_strict_refuses_to_start(models_dir, caplog):
    caplog.set_level(logging.INFO, logger="sinfusion.server")
    with BackgroundServer(ServerConfig(models=models_dir, grace=0.1)):
        pass
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and "clouds refused (model 'clouds' not served)" in errors[0]
    with pytest.raises(ConfigError, match="clouds: .*checksum mismatch"):
        BackgroundServer(ServerConfig(models=models_dir, strict=True)).start()


def test_no_servable_bundle_is_a_config_error(tmp_path):
    make_tiny_bundle(tmp_path / "a")
    damage(tmp_path / "a" / "weights" / "predictor.safetensors")
    with pytest.raises(ConfigError, match="no bundle can be served: .*predictor.safetensors: checksum "
                                          "mismatch; the weights file is damaged"):
        BackgroundServer(ServerConfig(models=tmp_path)).start()


def test_older_bundles_frames_are_checked_by_their_pixel_hash(tmp_path, caplog):
    bundle = make_tiny_bundle(tmp_path / "old")
    manifest = json.loads((bundle.path / MANIFEST).read_text())
    frames = bundle.frames()
    del manifest["frames_sha256"]  # as written before the field existed, by the trainer
    manifest["source"]["frames_sha256"] = hashlib.sha256(frames.tobytes()).hexdigest()
    (bundle.path / MANIFEST).write_text(json.dumps(manifest))
    np.testing.assert_array_equal(Bundle.open(bundle.path).frames(), frames)
    damage(bundle.path / FRAMES, 0.9)
    with pytest.raises(IntegrityError, match="checksum mismatch \\(source.frames_sha256\\)"):
        Bundle.open(bundle.path).frames()
    # Without any checksum the bundle is served, with a warning naming what cannot be checked.
    bare = make_tiny_bundle(tmp_path / "bare" / "b")
    manifest = json.loads((bare.path / MANIFEST).read_text())
    del manifest["frames_sha256"]
    (bare.path / MANIFEST).write_text(json.dumps(manifest))
    caplog.set_level(logging.WARNING, logger="sinfusion.server")
    with BackgroundServer(ServerConfig(models=tmp_path / "bare", grace=0.1)) as running:
        assert list(running.models) == ["b"]
    assert "the manifest records no checksum for frames.safetensors" in caplog.text


# --- a client that stops reading ------------------------------------------------------------------

def test_stalled_client_pauses_its_stream_and_leaves_the_engine_to_others(models_dir):
    config = ServerConfig(models=models_dir, max_frames=1000, grace=0.5)
    # A small receive window without BDP growth: gRPC stops taking frames after a few kilobytes.
    small_window = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 4096)]
    fast = pb.SamplingParams(steps=1, method=pb.SAMPLING_METHOD_DDIM, correction_steps=0, seed=5)
    with BackgroundServer(config) as running, \
            grpc.insecure_channel(running.target, options=small_window) as slow_channel, \
            grpc.insecure_channel(running.target) as channel:
        scheduler = running.models["tiny"].scheduler
        stalled = pb_grpc.SinFusionStub(slow_channel).Extrapolate(
            pb.ExtrapolateRequest(model="tiny", frames=1000, sampling=fast))
        assert next(stalled).index == 0
        deadline = time.monotonic() + 10
        while not (scheduler.jobs and scheduler.jobs[0].paused):
            assert time.monotonic() < deadline, "the stalled stream never paused"
            time.sleep(0.02)
        job = scheduler.jobs[0]
        steps = job.steps
        # Another client is served meanwhile; the stalled stream computes nothing more.
        other = list(pb_grpc.SinFusionStub(channel).Generate(
            pb.GenerateRequest(model="tiny", frames=20, sampling=fast)))
        time.sleep(0.2)
        assert len(other) == 20
        assert job.steps == steps and job.unread == RUNAHEAD
        assert steps < 50  # a few frames of window, not 1000 frames computed ahead
        # Reading again resumes it: every frame arrives, in order, none lost.
        rest = [f.index for f in stalled]
    assert rest == list(range(1, 1000))


# --- drain ----------------------------------------------------------------------------------------

def test_drain_keeps_the_port_open_for_live_streams_and_reports_not_serving(models_dir):
    config = ServerConfig(models=models_dir, max_frames=1000, grace=10, drain_delay=0.3)
    server = BackgroundServer(config)
    running = server.start()
    slow = pb.SamplingParams(steps=4, method=pb.SAMPLING_METHOD_DDIM, correction_steps=0, seed=1)
    with grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.SinFusionStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        live = stub.Extrapolate(pb.ExtrapolateRequest(model="tiny", frames=40, sampling=slow))
        got = [next(live).index]
        watch = health.Watch(health_pb2.HealthCheckRequest())  # never ends by itself
        assert next(watch).status == SERVING
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        deadline = time.monotonic() + 5
        while health.Check(health_pb2.HealthCheckRequest()).status != NOT_SERVING:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert health.Check(health_pb2.HealthCheckRequest(service="sinfusion.v1.SinFusion/tiny")).status \
            == NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            stub.ListModels(pb.ListModelsRequest())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in info.value.details()
        assert next(watch).status == NOT_SERVING
        got += [f.index for f in live]  # the live stream finishes every frame
        stopper.join(5)  # soon after it: the open Watch does not hold the drain to --grace (10 s)
        assert not stopper.is_alive()
    assert got == list(range(40))
    with grpc.insecure_channel(running.target) as channel:  # now the port is closed
        with pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_ipv6_hosts(models_dir):
    import socket

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("IPv6 loopback not configured")
    for host in ("::1", "::", "[::1]"):
        with serve(models_dir, host=host, metrics_port=0, grace=0.1) as (running, stub):
            assert running.target.startswith("[::1]:")
            assert stub.ListModels(pb.ListModelsRequest()).models
            import urllib.request

            with urllib.request.urlopen(f"http://[::1]:{running.metrics_port}/metrics", timeout=5) as r:
                assert b"sinfusion_bundles" in r.read()


def test_reflection_v1_and_v1alpha(channel):
    for version in ("v1", "v1alpha"):
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="sinfusion.v1.SinFusion")]
        listed, described = list(call(iter(requests), timeout=10))
        names = {s.name for s in listed.list_services_response.service}
        assert {"sinfusion.v1.SinFusion", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection"} <= names
        assert described.file_descriptor_response.file_descriptor_proto



def test_stalled_client_that_cancels_frees_its_slot_without_a_traceback(models_dir, caplog):
    caplog.set_level(logging.INFO)
    small_window = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 4096)]
    fast = pb.SamplingParams(steps=1, method=pb.SAMPLING_METHOD_DDIM, correction_steps=0, seed=5)
    with BackgroundServer(ServerConfig(models=models_dir, max_frames=1000, grace=0.5)) as running, \
            grpc.insecure_channel(running.target, options=small_window) as slow_channel:
        scheduler = running.models["tiny"].scheduler
        stalled = pb_grpc.SinFusionStub(slow_channel).Extrapolate(
            pb.ExtrapolateRequest(model="tiny", frames=1000, sampling=fast))
        next(stalled)
        deadline = time.monotonic() + 10
        while not (scheduler.jobs and scheduler.jobs[0].paused):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        caplog.clear()
        stalled.cancel()
        deadline = time.monotonic() + 10
        while running.live_streams or scheduler.held:
            assert time.monotonic() < deadline, "the cancelled stream kept its slot"
            time.sleep(0.02)
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "cancelled by the client or shutdown" in caplog.text
