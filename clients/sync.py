"""The blocking client: one method per RPC; streams come back as iterators of `Frame`s.

    with Client("127.0.0.1:50051") as client:
        for frame in client.extrapolate("clouds", 48, step=1):
            use(frame.image)          # uint8 (H, W, 3), as soon as the server finished it

Leaving a stream early (break, an exception in the loop) cancels the call on the server at once.
Errors are `ClientError`s with the server's gRPC status.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

import grpc
import numpy as np

from sinfusion.v1 import sinfusion_pb2 as pb
from sinfusion.v1 import sinfusion_pb2_grpc as pb_grpc

from . import messages as m
from .errors import ClientError
from .options import ConnectionOptions


class Client:
    def __init__(self, address: str | None = None, *, options: ConnectionOptions | None = None,
                 **option_fields):
        """`Client("host:port", token=..., tls_ca=..., timeout=...)` or `Client(options=...)`."""
        if options is None:
            options = ConnectionOptions(**({"address": address} if address else {}), **option_fields)
        elif address or option_fields:
            raise ValueError("give either options or address/option fields, not both")
        self.options = options
        self._channel = options.channel()
        self._stub = pb_grpc.SinFusionStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- unary ---------------------------------------------------------------------------------

    def _unary(self, method, request):
        try:
            return method(request, timeout=self.options.timeout, metadata=self.options.metadata)
        except grpc.RpcError as exc:
            raise ClientError.from_rpc(exc) from None

    def list_models(self) -> list[m.ModelInfo]:
        reply = self._unary(self._stub.ListModels, pb.ListModelsRequest())
        return [m.ModelInfo.from_proto(info) for info in reply.models]

    def describe_model(self, name: str) -> m.ModelInfo:
        reply = self._unary(self._stub.DescribeModel, pb.DescribeModelRequest(model=name))
        return m.ModelInfo.from_proto(reply)

    def health(self, service: str = "") -> str:
        """The standard grpc.health.v1 status of `service` ("" = the whole server): "SERVING",
        "NOT_SERVING", ... Needs the grpcio-health-checking package (server extras, Docker image)."""
        health_pb2, health_pb2_grpc = _health_modules()
        reply = self._unary(health_pb2_grpc.HealthStub(self._channel).Check,
                            health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    # ---- streams -------------------------------------------------------------------------------

    def _stream(self, call, failure: list[BaseException] | None = None) -> Iterator[m.Frame]:
        """Frames of a response stream; the call is cancelled if the consumer stops early."""
        try:
            for msg in call:
                yield m.frame_from_proto(msg)
        except grpc.RpcError as exc:
            if failure:
                raise failure[0] from None  # the input broke: that, not the CANCELLED it caused
            raise ClientError.from_rpc(exc) from None
        finally:
            call.cancel()  # no-op when the stream has ended
        if failure:
            raise failure[0]

    def extrapolate(self, model: str, frames: int, *, step: int = 1, start_frame: int | None = None,
                    start_image: np.ndarray | None = None, resize: str = "resize",
                    sampling: m.Sampling | None = None) -> Iterator[m.Frame]:
        """`frames` frames after (step > 0) or before (step < 0) a clip frame or your own image."""
        req = m.extrapolate_request(model, frames, step=step, start_frame=start_frame,
                                    start_image=start_image, resize=resize, sampling=sampling)
        return self._stream(self._stub.Extrapolate(req, timeout=self.options.stream_timeout,
                                                   metadata=self.options.metadata))

    def generate(self, model: str, frames: int, sampling: m.Sampling | None = None) -> Iterator[m.Frame]:
        """A new variation of the clip, `frames` frames long."""
        req = m.generate_request(model, frames, sampling)
        return self._stream(self._stub.Generate(req, timeout=self.options.stream_timeout,
                                                metadata=self.options.metadata))

    def upsample(self, model: str, frames: Iterable[np.ndarray], factor: int, *, resize: str = "resize",
                 sampling: m.Sampling | None = None) -> Iterator[m.Frame]:
        """Temporal upsampling: `frames` are sent while results come back, in time order.

        `frames` is read on a gRPC thread as the call proceeds (it may block, e.g. on stdin). If it
        raises, the call is cancelled and that exception is what the returned iterator raises.
        """
        first = m.upsample_first(model, factor, resize, sampling)
        failure: list[BaseException] = []
        holder: list = []
        lock = threading.Lock()

        def requests():
            try:
                yield from m.upsample_requests(first, frames)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, not swallowed
                with lock:
                    failure.append(exc)
                    if holder:
                        holder[0].cancel()

        call = self._stub.Upsample(requests(), timeout=self.options.stream_timeout,
                                   metadata=self.options.metadata)
        with lock:
            holder.append(call)
            if failure:
                call.cancel()
        return self._stream(call, failure)

    # ---- the image applications (docs/applications.md) ------------------------------------------

    def project(self, model: str, image: np.ndarray, strength: float | None = None, *,
                resize: str = "resize", sampling: m.Sampling | None = None,
                intermediate_steps: bool = False) -> Iterator[m.Frame]:
        """`image` noised to `strength` (noise std in [0, 1]; None = the server's 0.6) and denoised
        by the model's Projector. One frame, the result; with `intermediate_steps`, one per noise
        level (Frame.noise_level), the result last."""
        req = m.project_request(model, image, strength, resize=resize, sampling=sampling,
                                intermediate_steps=intermediate_steps)
        return self._stream(self._stub.Project(req, timeout=self.options.stream_timeout,
                                               metadata=self.options.metadata))

    def summarize(self, model: str, image: np.ndarray, scales: Iterable[float], *,
                  strength: float | None = None, axes: str = "both", resize: str = "resize",
                  sampling: m.Sampling | None = None) -> Iterator[m.Frame]:
        """Visual summary: one frame per scale (in (0, 1], of the image at the model's size), each
        the previous one shrunk on `axes` ("both", "width", "height") and projected."""
        req = m.summarize_request(model, image, scales, strength=strength, axes=axes, resize=resize,
                                  sampling=sampling)
        return self._stream(self._stub.Summarize(req, timeout=self.options.stream_timeout,
                                                 metadata=self.options.metadata))


def _health_modules():
    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError:
        raise ImportError("health checks need the grpcio-health-checking package "
                          "(pip install grpcio-health-checking)") from None
    return health_pb2, health_pb2_grpc
