"""Project and Summarize against a real server on loopback: frames, errors, limits, cancellation,
malformed bytes, and the engine runtimes' fixed sizes."""

from __future__ import annotations

import logging
import math

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sinfusion.sampling import projection_levels
from sinfusion.schedule import make_schedule
from sinfusion.v1 import sinfusion_pb2 as pb
from tests.conftest import bundles_folder, make_tiny_bundle, pixels, raw, serve, tiny_clip, wait_until

H, W = 16, 24
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
EXHAUSTED, PRECONDITION = grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION
SERVICE = "/sinfusion.v1.SinFusion/"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return bundles_folder(tmp_path_factory.mktemp("models"), tiny={},
                          still={"roles": ("projector",), "seed": 1},
                          nopro={"roles": ("predictor",), "seed": 2})


@pytest.fixture(scope="module")
def server_settings() -> dict:
    return {"max_frames": 6, "max_message_bytes": 4096, "grace": 0.5}


def fast(seed: int | None = 1, steps: int = 2) -> pb.SamplingParams:
    params = pb.SamplingParams(steps=steps, method=pb.SAMPLING_METHOD_DDIM)
    if seed is not None:
        params.seed = seed
    return params


IMAGE = tiny_clip(1, H, W, seed=5)[0]


def proj(**kw) -> pb.ProjectRequest:
    return pb.ProjectRequest(**{"model": "still", "image": raw(IMAGE), "sampling": fast(), **kw})


def summ(**kw) -> pb.SummarizeRequest:
    return pb.SummarizeRequest(**{"model": "still", "image": raw(IMAGE), "scales": [0.75, 0.5],
                                  "sampling": fast(), **kw})


# --- frames ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["still", "tiny"])  # an image model; a video model's Projector
def test_project_sends_one_result_seeded(stub, model):
    a = list(stub.Project(proj(model=model, strength=0.5)))
    b = list(stub.Project(proj(model=model, strength=0.5)))
    assert [(f.index, f.width, f.height, f.synthesized, f.resized, f.noise_level) for f in a] == \
        [(0, W, H, True, False, 0)]
    assert a[0].rgb == b[0].rgb and a[0].rgb != IMAGE.tobytes()


def test_project_at_strength_zero_sends_the_image_back_unchanged(stub):
    frames = list(stub.Project(proj(strength=0.0)))
    assert len(frames) == 1 and not frames[0].synthesized
    assert frames[0].rgb == IMAGE.tobytes()


def test_project_intermediate_steps_descend_to_the_result(stub):
    steps = list(stub.Project(proj(strength=0.7, intermediate_steps=True, sampling=fast(seed=4, steps=3))))
    levels = projection_levels(make_schedule("cosine", 50), 0.7, 3)
    assert [f.noise_level for f in steps] == levels and levels[-1] == 0 and len(levels) == 4
    assert [f.index for f in steps] == list(range(4)) and all(f.synthesized for f in steps)
    plain = list(stub.Project(proj(strength=0.7, sampling=fast(seed=4, steps=3))))
    assert steps[-1].rgb == plain[0].rgb


def test_project_default_strength_and_sampling(stub):
    """No strength, empty SamplingParams: 0.6 and DDPM over every level from t."""
    frames = list(stub.Project(pb.ProjectRequest(model="still", image=raw(IMAGE))))
    assert len(frames) == 1 and frames[0].synthesized


def test_project_resizes_a_client_image_of_another_size(stub):
    small = tiny_clip(1, 8, 12)[0]
    frames = list(stub.Project(proj(image=raw(small))))
    assert [(f.width, f.height, f.resized) for f in frames] == [(W, H, True)]


@pytest.mark.parametrize("axes, sizes", [
    (pb.SUMMARY_AXES_UNSPECIFIED, [(18, 12), (12, 8)]),
    (pb.SUMMARY_AXES_WIDTH, [(18, 16), (12, 16)]),
    (pb.SUMMARY_AXES_HEIGHT, [(24, 12), (24, 8)]),
])
def test_summarize_streams_one_frame_per_scale_at_its_size(stub, axes, sizes):
    frames = list(stub.Summarize(summ(axes=axes)))
    assert [f.index for f in frames] == [0, 1]
    assert [(f.width, f.height) for f in frames] == sizes
    assert all(f.synthesized and not f.resized for f in frames)
    for f in frames:
        pixels(f)


def test_summarize_is_seeded(stub):
    a = [f.rgb for f in stub.Summarize(summ(strength=0.4))]
    b = [f.rgb for f in stub.Summarize(summ(strength=0.4))]
    assert a == b


# --- errors ---------------------------------------------------------------------------------------

def call_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    return info.value


SHARED_ERRORS = [  # fields ProjectRequest and SummarizeRequest share, checked the same way
    ({"model": "nope"}, NOT_FOUND, "model 'nope' not found; served models: nopro, still, tiny"),
    ({"model": ""}, INVALID, "model must name a served model"),
    ({"image": None}, INVALID, "image must be set: the RGB24 image to work on"),
    ({"image": pb.RawFrame(width=W, height=H, rgb=b"12")}, INVALID,
     "image.rgb must be width*height*3 = 1152 bytes for 24x16, got 2"),
    ({"image": pb.RawFrame(width=0, height=H)}, INVALID, "image.width and image.height must be >= 1"),
    ({"image": raw(tiny_clip(1, 8, 12)[0]), "resize": pb.RESIZE_POLICY_REFUSE}, INVALID,
     "image is 12x8 but model 'still' takes 24x16 (resize policy RESIZE_POLICY_REFUSE)"),
    ({"resize": 9}, INVALID, "resize must be RESIZE_POLICY_RESIZE (1) or RESIZE_POLICY_REFUSE (2), got 9"),
    ({"strength": -0.1}, INVALID, "strength must be in [0, 1] (unset = 0.6), got -0.1"),
    ({"strength": 1.5}, INVALID, "strength must be in [0, 1] (unset = 0.6), got 1.5"),
    ({"strength": math.nan}, INVALID, "strength must be in [0, 1] (unset = 0.6), got nan"),
    ({"sampling": pb.SamplingParams(steps=51)}, INVALID, "sampling.steps must be in [0, 50]"),
    ({"sampling": pb.SamplingParams(method=7)}, INVALID, "sampling.method must be"),
    ({"image": raw(tiny_clip(1, 40, 40)[0])}, EXHAUSTED, "Received message larger than max"),
]


def without_none(fields: dict) -> dict:
    return {k: v for k, v in fields.items() if v is not None}


@pytest.mark.parametrize("fields, code, message", SHARED_ERRORS)
def test_project_errors(stub, fields, code, message):
    request = proj(**without_none(fields))
    if fields.get("image", 1) is None:
        request.ClearField("image")
    error = call_error(stub.Project(request))
    assert error.code() == code and message in error.details()


@pytest.mark.parametrize("fields, code, message", SHARED_ERRORS)
def test_summarize_errors_shared_with_project(stub, fields, code, message):
    request = summ(**without_none(fields))
    if fields.get("image", 1) is None:
        request.ClearField("image")
    error = call_error(stub.Summarize(request))
    assert error.code() == code and message in error.details()


@pytest.mark.parametrize("fields, code, message", [
    ({"scales": []}, INVALID, "scales must hold between 1 and 6 scales (one frame each), got 0"),
    ({"scales": [0.9] * 7}, INVALID, "scales must hold between 1 and 6 scales (one frame each), got 7"),
    ({"scales": [0.5, 0.0]}, INVALID, "scales[1] must be in (0, 1], got 0.0"),
    ({"scales": [1.5]}, INVALID, "scales[0] must be in (0, 1], got 1.5"),
    ({"scales": [math.nan]}, INVALID, "scales[0] must be in (0, 1], got nan"),
    ({"scales": [0.3]}, INVALID, "scales[0] = 0.3 makes 7x5 of 24x16; each side must be at least 8 px"),
    ({"axes": 4}, INVALID, "axes must be SUMMARY_AXES_BOTH (1), SUMMARY_AXES_WIDTH (2) or "
                           "SUMMARY_AXES_HEIGHT (3), got 4"),
])
def test_summarize_errors(stub, fields, code, message):
    error = call_error(stub.Summarize(summ(**fields)))
    assert error.code() == code and message in error.details()


def test_a_model_without_projector_cannot_project_or_summarize(stub):
    error = call_error(stub.Project(proj(model="nopro")))
    assert error.code() == PRECONDITION
    assert "model 'nopro' cannot project: it needs a Projector (has: predictor)" in error.details()
    error = call_error(stub.Summarize(summ(model="nopro")))
    assert error.code() == PRECONDITION and "cannot summarize: it needs a Projector" in error.details()


def raw_call(channel, method: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
    try:
        list(channel.unary_stream(SERVICE + method)(payload, timeout=20))
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("method, payload, message", [
    ("Project", b"\x0a\x05ab", "malformed ProjectRequest: model at byte 0 says 5 bytes but only 2 follow"),
    ("Project", b"\x12\x03\x1a\x05a", "malformed ProjectRequest: image.rgb at byte 2 says 5 bytes"),
    ("Project", b"\x21\x00", "malformed ProjectRequest: strength at byte 0 is cut off"),
    ("Summarize", b"\x22\x09\x00", "malformed SummarizeRequest: scales at byte 0 says 9 bytes"),
    ("Summarize", b"\x0a\x02\xff\xfe", "malformed SummarizeRequest: model at byte 0 is not valid UTF-8"),
])
def test_malformed_bytes_name_the_field(channel, caplog, method, payload, message):
    caplog.set_level(logging.INFO, logger="sinfusion.server")
    code, details = raw_call(channel, method, payload)
    assert code == INVALID and message in details, details
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- limits and cancellation ------------------------------------------------------------------------

def test_stream_limit_and_cancelled_summary_frees_its_slot(models_dir):
    with serve(models_dir, max_streams=1, grace=0.5) as (running, stub):
        scheduler = running.models["still"].scheduler
        # 1000 full-length DDPM projections: far longer than the test, unless cancellation works.
        long = stub.Summarize(pb.SummarizeRequest(model="still", image=raw(IMAGE), strength=1.0,
                                                  scales=[1.0] * 1000))
        assert next(long).index == 0
        error = call_error(stub.Project(proj()))
        assert error.code() == EXHAUSTED
        assert "too many concurrent streams: the server's limit (--max-streams) is 1" in error.details()
        long.cancel()
        wait_until(lambda: running.live_streams == 0 and scheduler.held == 0)
        assert len(list(stub.Project(proj()))) == 1


def test_client_deadline_stops_a_projection(models_dir):
    with serve(models_dir, max_streams=1, grace=0.5) as (running, stub):
        call = stub.Summarize(pb.SummarizeRequest(model="still", image=raw(IMAGE), strength=1.0,
                                                  scales=[1.0] * 1000), timeout=0.5)
        error = call_error(call)
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: running.live_streams == 0 and running.models["still"].scheduler.live == 0)
        assert len(list(stub.Project(proj(intermediate_steps=True)))) > 1


# --- engine runtimes: fixed sizes -----------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from sinfusion.bundle import Bundle
    from sinfusion.export.pipeline import ExportOptions, export_bundle

    root = tmp_path_factory.mktemp("engines")
    bundle = make_tiny_bundle(root / "still", roles=("projector",), seed=1)
    export_bundle(Bundle.open(bundle.path), ExportOptions(kinds=("onnx",), batches=(1,)))
    return root


def test_onnx_engines_project_and_refuse_summary_sizes_they_lack(exported):
    with serve(exported, runtime="onnxruntime-cpu", grace=0.5) as (_, stub):
        assert len(list(stub.Project(proj(strength=0.5)))) == 1
        assert [(f.width, f.height) for f in stub.Summarize(summ(scales=[1.0]))] == [(W, H)]
        error = call_error(stub.Summarize(summ()))
        assert error.code() == PRECONDITION
        assert ("model 'still' runs on onnxruntime-cpu, whose projector engines have fixed sizes "
                "(24x16); this summary needs 18x12, 12x8: export engines") in error.details()


# --- fuzz: well-formed, mutated and random bytes never get UNKNOWN or INTERNAL ---------------------

NAMES = st.sampled_from(["still", "tiny", "nopro", "", "nope", "s" * 300])
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1))


def requests_of(method: str) -> st.SearchStrategy:
    image = st.one_of(st.none(), st.just(raw(IMAGE)), st.builds(
        pb.RawFrame, width=st.integers(0, 30), height=st.integers(0, 20), rgb=st.binary(max_size=64)))
    sampling = st.builds(pb.SamplingParams, steps=st.integers(0, 3), method=st.integers(0, 3),
                         seed=st.integers(0, 2**64 - 1))
    if method == "Project":
        return st.builds(pb.ProjectRequest, model=NAMES, image=image, resize=st.integers(0, 3),
                         strength=FLOATS, sampling=sampling, intermediate_steps=st.booleans())
    return st.builds(pb.SummarizeRequest, model=NAMES, image=image, resize=st.integers(0, 3),
                     scales=st.lists(FLOATS, max_size=8), axes=st.integers(0, 5), strength=FLOATS,
                     sampling=sampling)


@st.composite
def fuzz_call(draw) -> tuple[str, bytes]:
    method = draw(st.sampled_from(["Project", "Summarize"]))
    how = draw(st.sampled_from(["valid", "cut", "flip", "random"]))
    if how == "random":
        return method, draw(st.binary(max_size=200))
    data = draw(requests_of(method)).SerializeToString()
    if how == "cut" and data:
        return method, data[:draw(st.integers(0, len(data) - 1))]
    if how == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        return method, data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    return method, data


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(call=fuzz_call())
def test_fuzz_project_and_summarize_never_unknown_or_internal(running, call):
    method, payload = call
    with grpc.insecure_channel(running.target) as channel:
        try:
            replies = list(channel.unary_stream(SERVICE + method)(payload, timeout=30))
        except grpc.RpcError as error:
            assert error.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), \
                (method, payload, error.details())
            assert len(error.details() or "") < 1000
            return
    frames = [pb.Frame.FromString(r) for r in replies]
    assert frames and [f.index for f in frames] == list(range(len(frames)))
    assert all(len(f.rgb) == f.width * f.height * 3 for f in frames)
