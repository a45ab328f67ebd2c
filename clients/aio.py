"""The asyncio client: the same calls as `Client`, as coroutines and async iterators.

    async with AsyncClient("127.0.0.1:50051") as client:
        async for frame in client.generate("clouds", 48):
            use(frame.image)

To stop a stream early, break out of the loop and close the iterator (or use
`contextlib.aclosing`): closing cancels the call on the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable

import grpc
import numpy as np

from sinfusion.v1 import sinfusion_pb2 as pb
from sinfusion.v1 import sinfusion_pb2_grpc as pb_grpc

from . import messages as m
from .errors import ClientError
from .options import ConnectionOptions
from .sync import _health_modules


class AsyncClient:
    def __init__(self, address: str | None = None, *, options: ConnectionOptions | None = None,
                 **option_fields):
        if options is None:
            options = ConnectionOptions(**({"address": address} if address else {}), **option_fields)
        elif address or option_fields:
            raise ValueError("give either options or address/option fields, not both")
        self.options = options
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.SinFusionStub | None = None

    async def __aenter__(self) -> AsyncClient:
        # The channel is made here, inside the running event loop that will use it.
        self._channel = self.options.aio_channel()
        self._stub = pb_grpc.SinFusionStub(self._channel)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    @property
    def stub(self) -> pb_grpc.SinFusionStub:
        if self._stub is None:
            raise RuntimeError("use the AsyncClient inside `async with AsyncClient(...) as client:`")
        return self._stub

    # ---- unary ---------------------------------------------------------------------------------

    async def _unary(self, method, request):
        try:
            return await method(request, timeout=self.options.timeout, metadata=self.options.metadata)
        except grpc.aio.AioRpcError as exc:
            raise ClientError.from_rpc(exc) from None

    async def list_models(self) -> list[m.ModelInfo]:
        reply = await self._unary(self.stub.ListModels, pb.ListModelsRequest())
        return [m.ModelInfo.from_proto(info) for info in reply.models]

    async def describe_model(self, name: str) -> m.ModelInfo:
        reply = await self._unary(self.stub.DescribeModel, pb.DescribeModelRequest(model=name))
        return m.ModelInfo.from_proto(reply)

    async def health(self, service: str = "") -> str:
        """The grpc.health.v1 status of `service` ("" = the whole server); see Client.health."""
        health_pb2, health_pb2_grpc = _health_modules()
        reply = await self._unary(health_pb2_grpc.HealthStub(self._channel).Check,
                                  health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    # ---- streams -------------------------------------------------------------------------------

    async def _stream(self, call) -> AsyncIterator[m.Frame]:
        try:
            async for msg in call:
                yield m.frame_from_proto(msg)
        except grpc.aio.AioRpcError as exc:
            raise ClientError.from_rpc(exc) from None
        finally:
            call.cancel()  # no-op when the stream has ended

    def extrapolate(self, model: str, frames: int, *, step: int = 1, start_frame: int | None = None,
                    start_image: np.ndarray | None = None, resize: str = "resize",
                    sampling: m.Sampling | None = None) -> AsyncIterator[m.Frame]:
        req = m.extrapolate_request(model, frames, step=step, start_frame=start_frame,
                                    start_image=start_image, resize=resize, sampling=sampling)
        return self._stream(self.stub.Extrapolate(req, timeout=self.options.stream_timeout,
                                                  metadata=self.options.metadata))

    def generate(self, model: str, frames: int, sampling: m.Sampling | None = None) -> AsyncIterator[m.Frame]:
        req = m.generate_request(model, frames, sampling)
        return self._stream(self.stub.Generate(req, timeout=self.options.stream_timeout,
                                               metadata=self.options.metadata))

    def project(self, model: str, image: np.ndarray, strength: float | None = None, *,
                resize: str = "resize", sampling: m.Sampling | None = None,
                intermediate_steps: bool = False) -> AsyncIterator[m.Frame]:
        """See Client.project."""
        req = m.project_request(model, image, strength, resize=resize, sampling=sampling,
                                intermediate_steps=intermediate_steps)
        return self._stream(self.stub.Project(req, timeout=self.options.stream_timeout,
                                              metadata=self.options.metadata))

    def summarize(self, model: str, image: np.ndarray, scales: Iterable[float], *,
                  strength: float | None = None, axes: str = "both", resize: str = "resize",
                  sampling: m.Sampling | None = None) -> AsyncIterator[m.Frame]:
        """See Client.summarize."""
        req = m.summarize_request(model, image, scales, strength=strength, axes=axes, resize=resize,
                                  sampling=sampling)
        return self._stream(self.stub.Summarize(req, timeout=self.options.stream_timeout,
                                                metadata=self.options.metadata))

    async def upsample(self, model: str, frames: AsyncIterable[np.ndarray] | Iterable[np.ndarray],
                       factor: int, *, resize: str = "resize",
                       sampling: m.Sampling | None = None) -> AsyncIterator[m.Frame]:
        """Send `frames` (async or plain iterable) while frames come back. If `frames` raises, the
        call is cancelled and that exception is raised here."""
        first = m.upsample_first(model, factor, resize, sampling)
        call = self.stub.Upsample(timeout=self.options.stream_timeout, metadata=self.options.metadata)
        failure: list[BaseException] = []

        async def send() -> None:
            try:
                await call.write(first)
                async for image in _aiter(frames):
                    await call.write(pb.UpsampleRequest(frame=m.raw_frame(image)))
                await call.done_writing()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return  # the call ended (server error, cancel): the reading side reports it
            except Exception as exc:  # noqa: BLE001 - the input broke: handed to the consumer
                failure.append(exc)
                call.cancel()

        sender = asyncio.create_task(send())
        try:
            async for frame in self._stream(call):
                yield frame
        except (ClientError, asyncio.CancelledError):
            # Our own cancel after an input failure ends the read with CancelledError (grpc.aio's
            # way to report a locally cancelled call): report the input failure instead.
            if failure:
                raise failure[0] from None
            raise
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        if failure:
            raise failure[0]


async def _aiter(frames: AsyncIterable | Iterable) -> AsyncIterator:
    if hasattr(frames, "__aiter__"):
        async for item in frames:
            yield item
    else:
        for item in frames:
            yield item
