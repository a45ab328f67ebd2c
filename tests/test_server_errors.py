"""Bad requests, limits and cancellation against a real server: status codes and messages."""

from __future__ import annotations

import grpc
import pytest

from sinfusion.v1 import sinfusion_pb2 as pb
from tests.conftest import serve, tiny_clip, wait_until

H, W = 16, 24
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
EXHAUSTED, PRECONDITION = grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(scope="module")
def server_settings() -> dict:
    return {"max_frames": 10, "max_message_bytes": 4096, "grace": 0.5}


def raw(w: int, h: int, nbytes: int | None = None) -> pb.RawFrame:
    return pb.RawFrame(width=w, height=h, rgb=bytes(w * h * 3 if nbytes is None else nbytes))


def fast(**kw) -> pb.SamplingParams:
    return pb.SamplingParams(steps=2, method=pb.SAMPLING_METHOD_DDIM, correction_steps=1, **kw)


def call_error(fn) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = fn()
        if not isinstance(result, pb.ModelInfo):
            list(result)
    return info.value


def ext(**kw) -> pb.ExtrapolateRequest:
    return pb.ExtrapolateRequest(**{"model": "tiny", "frames": 2, "sampling": fast(), **kw})


EXTRAPOLATE_ERRORS = [
    (ext(model="nope"), NOT_FOUND, "model 'nope' not found; served models: still, tiny"),
    (ext(model=""), INVALID, "model must name a served model"),
    (ext(model="still"), PRECONDITION, "model 'still' cannot extrapolate"),
    (ext(frames=0), INVALID, "frames must be in [1, 10], got 0"),
    (ext(frames=11), INVALID, "frames must be in [1, 10], got 11"),
    (ext(step=4), INVALID, "step must be in [-3, 3] (0 means 1), got 4"),
    (ext(step=-4), INVALID, "step must be in [-3, 3] (0 means 1), got -4"),
    (ext(start_frame=8), INVALID, "start_frame must be in [0, 7], got 8"),
    (ext(start_image=raw(W, H, 10)), INVALID, "start_image.rgb must be width*height*3 = 1152 bytes"),
    (ext(start_image=raw(0, H)), INVALID, "start_image.width and start_image.height must be >= 1"),
    (ext(start_image=raw(20, 12), resize=pb.RESIZE_POLICY_REFUSE), INVALID,
     "start_image is 20x12 but model 'tiny' takes 24x16"),
    (ext(start_image=raw(W, H), resize=7), INVALID, "resize must be RESIZE_POLICY_RESIZE (1)"),
    (ext(start_image=raw(40, 40)), EXHAUSTED, "Received message larger than max (4826 vs. 4096)"),
    (ext(sampling=pb.SamplingParams(steps=51)), INVALID, "sampling.steps must be in [0, 50]"),
    (ext(sampling=pb.SamplingParams(correction_steps=51)), INVALID,
     "sampling.correction_steps must be in [0, 50] (0 = off), got 51"),
    (ext(sampling=pb.SamplingParams(method=5)), INVALID, "sampling.method must be"),
]


@pytest.mark.parametrize("request_, code, message", EXTRAPOLATE_ERRORS)
def test_extrapolate_errors(stub, request_, code, message):
    error = call_error(lambda: stub.Extrapolate(request_))
    assert error.code() == code
    assert message in error.details()


def test_generate_and_describe_errors(stub):
    error = call_error(lambda: stub.DescribeModel(pb.DescribeModelRequest(model="nope")))
    assert error.code() == NOT_FOUND
    error = call_error(lambda: stub.Generate(pb.GenerateRequest(model="still", frames=2, sampling=fast())))
    assert error.code() == PRECONDITION and "frames must be 1, got 2" in error.details()
    error = call_error(lambda: stub.Generate(pb.GenerateRequest(model="tiny", frames=0)))
    assert error.code() == INVALID and "frames must be in [1, 10], got 0" in error.details()


def upsample(stub, first: pb.UpsampleRequest, frames=()):
    return stub.Upsample(iter([first, *[pb.UpsampleRequest(frame=f) for f in frames]]))


def test_upsample_errors(stub):
    cases = [
        (pb.UpsampleRequest(model="nope", factor=2), NOT_FOUND, "model 'nope' not found"),
        (pb.UpsampleRequest(model="still", factor=2), PRECONDITION, "needs an Interpolator"),
        (pb.UpsampleRequest(model="tiny", factor=3), INVALID, "factor must be 2, 4 or 8, got 3"),
        (pb.UpsampleRequest(model="tiny", factor=2, sampling=pb.SamplingParams(steps=99)), INVALID,
         "sampling.steps must be in [0, 50]"),
    ]
    for first, code, message in cases:
        error = call_error(lambda: upsample(stub, first))
        assert error.code() == code and message in error.details()


def test_upsample_bad_frame_mid_stream(stub):
    """Frames already streamed arrive; the bad one ends the call with a message naming it."""
    good = raw(W, H)
    call = upsample(stub, pb.UpsampleRequest(model="tiny", factor=2, sampling=fast()),
                    [good, good, raw(W, H, 5)])
    got = []
    with pytest.raises(grpc.RpcError) as info:
        for frame in call:
            got.append(frame.index)
    assert info.value.code() == INVALID
    assert "frame (input 2).rgb must be width*height*3 = 1152 bytes" in info.value.details()
    refuse = upsample(stub, pb.UpsampleRequest(model="tiny", factor=2, resize=pb.RESIZE_POLICY_REFUSE),
                      [raw(30, 20)])
    error = call_error(lambda: refuse)
    assert error.code() == INVALID and "frame (input 0) is 30x20" in error.details()


def test_oversized_message_far_beyond_the_limit(stub):
    """gRPC refuses it from the message header, before buffering it: RESOURCE_EXHAUSTED."""
    error = call_error(lambda: stub.Extrapolate(ext(start_image=raw(800, 600))))
    assert error.code() == EXHAUSTED


def test_stream_limit_and_cancellation_frees_the_slot(models_dir):
    with serve(models_dir, max_streams=1, grace=0.5) as (running, stub):
        scheduler = running.models["tiny"].scheduler
        long = stub.Extrapolate(pb.ExtrapolateRequest(model="tiny", frames=1000, sampling=fast(seed=1)))
        assert next(long).index == 0
        error = call_error(lambda: stub.Generate(pb.GenerateRequest(model="tiny", frames=1)))
        assert error.code() == EXHAUSTED
        assert "too many concurrent streams: the server's limit (--max-streams) is 1" in error.details()
        long.cancel()
        # The slot is free and the job dropped (its loop closed), not run on to its 1000th frame.
        wait_until(lambda: running.live_streams == 0 and scheduler.held == 0)
        frames = list(stub.Generate(pb.GenerateRequest(model="tiny", frames=1, sampling=fast())))
        assert len(frames) == 1


def test_client_deadline_stops_the_stream(models_dir):
    with serve(models_dir, max_streams=1, grace=0.5) as (running, stub):
        call = stub.Extrapolate(pb.ExtrapolateRequest(model="tiny", frames=1000, sampling=fast()),
                                timeout=0.5)
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: running.live_streams == 0 and running.models["tiny"].scheduler.live == 0)
        clip = tiny_clip(1, H, W)
        assert len(list(stub.Extrapolate(pb.ExtrapolateRequest(
            model="tiny", frames=1, start_image=pb.RawFrame(width=W, height=H, rgb=clip[0].tobytes()),
            sampling=fast())))) == 1


def test_upsample_client_going_away_frees_the_slot(models_dir):
    import threading

    with serve(models_dir, max_streams=1, grace=0.5) as (running, stub):
        hold = threading.Event()
        clip = tiny_clip(2, H, W)

        def requests():
            yield pb.UpsampleRequest(model="tiny", factor=2, sampling=fast(),
                                     frame=pb.RawFrame(width=W, height=H, rgb=clip[0].tobytes()))
            hold.wait(30)  # the client keeps its stream open without sending more

        call = stub.Upsample(requests())
        assert next(call).index == 0  # the first original comes back at once
        assert running.live_streams == 1
        call.cancel()
        hold.set()
        wait_until(lambda: running.live_streams == 0)
        assert len(list(stub.Generate(pb.GenerateRequest(model="tiny", frames=1, sampling=fast())))) == 1
