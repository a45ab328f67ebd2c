"""The grpc.aio servicer of sinfusion.v1.SinFusion: converts messages and maps errors to status codes.

The work lives elsewhere: requests (validation), served (bundles and runtimes), scheduler (batched
engine calls), sinfusion.sampling (the loops), wire (bytes that are not a valid request). A streaming
RPC is an async generator that submits its loop to the model's scheduler and forwards each frame as
soon as the scheduler finishes it.

Errors are answered with set_code/set_details and a return, not context.abort(): an exception raised
through the handler would keep its frame, and with it the request (up to --max-message-bytes), alive
in a reference cycle until the garbage collector happens to run.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass

import grpc

from sinfusion.frames import to_model
from sinfusion.sampling import (Loop, extrapolate, generate, generate_defaults, project,
                                projection_levels, summarize, upsample)
from sinfusion.v1 import sinfusion_pb2 as pb
from sinfusion.v1 import sinfusion_pb2_grpc as pb_grpc

from . import requests as rq
from .config import ServerConfig
from .metrics import Metrics
from .served import MAX_STEP, RefusedBundle, ServedModel, short
from .requests import RequestError
from .scheduler import Job, WireFrame

log = logging.getLogger("sinfusion.server")

UPSAMPLE_READAHEAD = 4  # client frames buffered ahead of interpolation; beyond it gRPC flow control


def model_info(model: ServedModel) -> pb.ModelInfo:
    m = model.bundle.manifest
    return pb.ModelInfo(
        name=model.name, width=m.width, height=m.height, fps=m.fps, frame_count=m.frame_count,
        capabilities=model.capabilities, runtime=model.runtime.name, roles=model.roles,
        schedule_steps=model.schedule_steps, default_correction_steps=m.correction_steps,
        batch_sizes=model.batch_sizes, mode=m.mode, max_step=MAX_STEP,
        quality=quality_info(m.quality), correction_weight=m.correction_weight,
        correction_passes=m.correction_passes, predictor_margin=m.predictor_margin,
        coarse_correction_level=m.coarse_correction_level,
        coarse_correction_weight=m.coarse_correction_weight,
        layout_pull=m.layout_pull, layout_sigma=m.layout_sigma, layout_motion=m.layout_motion,
        layout_window=m.layout_window,
    )


def quality_info(record: dict) -> pb.NextFrameQuality | None:
    """The manifest's "quality" record (trainer/monitor.py) as the wire message; None when absent."""
    if "pairs" not in record:  # nothing held out, or no Predictor measured
        return None
    return pb.NextFrameQuality(
        model_psnr=record["model_psnr"], copy_psnr=record["copy_psnr"], pairs=record["pairs"],
        pairs_won=record["pairs_won"], predictor_steps=record["predictor_steps"],
        predictor_seconds=record["predictor_seconds"], verdict=record["verdict"])


class StreamSlots:
    """The --max-streams limit over all models."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.live = 0

    def acquire(self) -> None:
        if self.live >= self.limit:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"too many concurrent streams: the server's limit (--max-streams) is "
                               f"{self.limit}; retry later")
        self.live += 1

    def release(self) -> None:
        self.live -= 1


@dataclass
class Stream:
    """A validated streaming request: the loop to run and what its frames carry.

    `sizes` and `levels`, indexed by frame index, give frames not at the model's size their size
    (Summarize) and intermediate frames their noise level (Project); the scheduler carries bytes
    only. `feed`, for a streamed-input loop (Upsample), reads the client's frames into the job.
    """

    model: ServedModel
    what: str  # the request in the log's words
    loop: Loop
    resized: Callable[[int], bool] = lambda index: False
    sizes: list[tuple[int, int]] | None = None
    levels: list[int] | None = None
    feed: Callable[[Job], Awaitable[None]] | None = None
    readahead: int = 0  # input frames read ahead of the loop; beyond it gRPC flow control


class StreamRun:
    """Bookkeeping of one streaming RPC: its slot, metrics, and the log line saying what it did."""

    _ids = itertools.count(1)

    def __init__(self, service: SinFusionService, rpc: str, model: ServedModel, what: str,
                 context) -> None:
        self.service, self.rpc, self.model, self.what = service, rpc, model, what
        self.id = next(self._ids)
        self.peer = context.peer()
        self.start = time.perf_counter()
        self.first: float | None = None
        self.count = 0
        self.outcome = "failed"

    def __enter__(self) -> StreamRun:
        self.service.slots.acquire()
        self.service.metrics.live_streams.labels(self.model.name).inc()
        log.info("stream %d %s start: model=%s %s peer=%s", self.id, self.rpc, self.model.name,
                 self.what, self.peer)
        return self

    def frame(self, f: WireFrame, resized: bool, size: tuple[int, int] | None = None,
              noise_level: int = 0) -> pb.Frame:
        """A Frame message at the model's size, or at `size` (height, width): Summarize's."""
        if self.first is None:
            self.first = time.perf_counter() - self.start
            self.service.metrics.first_frame.labels(self.model.name, self.rpc).observe(self.first)
        self.count += 1
        self.service.metrics.frames.labels(self.model.name, self.rpc, str(f.synthesized).lower()).inc()
        h, w = size or self.model.size
        return pb.Frame(index=f.index, width=w, height=h, rgb=f.rgb, synthesized=f.synthesized,
                        resized=resized, noise_level=noise_level)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.service.slots.release()
        self.service.metrics.live_streams.labels(self.model.name).dec()
        if exc_type is None:
            self.outcome = "done"
        elif issubclass(exc_type, (asyncio.CancelledError, GeneratorExit)):
            self.outcome = "cancelled by the client or shutdown"
            self.service.metrics.rpc_seconds.labels(self.rpc, "CANCELLED").observe(
                time.perf_counter() - self.start)
        elif isinstance(exc, RequestError):
            self.outcome = f"refused: {exc.message}"
        else:
            self.outcome = f"failed: {exc}"
        first = "-" if self.first is None else f"{self.first:.3f} s"
        log.info("stream %d %s %s: %d frames in %.3f s (first frame %s)", self.id, self.rpc,
                 self.outcome, self.count, time.perf_counter() - self.start, first)


class SinFusionService(pb_grpc.SinFusionServicer):
    def __init__(self, models: dict[str, ServedModel], config: ServerConfig, metrics: Metrics,
                 refused: list[RefusedBundle] = ()) -> None:
        self.models = models
        self.refused = list(refused)
        self.config = config
        self.metrics = metrics
        self.slots = StreamSlots(config.max_streams)
        self.draining = False  # set by Running.drain: new calls get UNAVAILABLE

    # --- plumbing --------------------------------------------------------------------------------

    def _fail(self, context, rpc: str, start: float, exc: Exception) -> None:
        """Answer the RPC with a status; RequestError is the client's mistake, the rest is INTERNAL."""
        if isinstance(exc, RequestError):
            code, message = exc.code, exc.message
            log.info("%s refused (%s): %s", rpc, code.name, message)
        else:
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {short(str(exc), 200)}"
            log.error("%s failed", rpc, exc_info=exc)
        self.metrics.rpc_seconds.labels(rpc, code.name).observe(time.perf_counter() - start)
        context.set_code(code)
        context.set_details(message)

    def refused_on_the_wire(self, method: str, error: RequestError) -> None:
        """server.wire's hook: a request refused before it was decoded (malformed or oversized)."""
        log.info("%s refused (%s): %s", method.rsplit("/", 1)[-1], error.code.name, error.message)
        if method.startswith(f"/{pb.DESCRIPTOR.package}."):
            self.metrics.rpc_seconds.labels(method.rsplit("/", 1)[-1], error.code.name).observe(0.0)

    def _check_open(self) -> None:
        if self.draining:
            raise RequestError(grpc.StatusCode.UNAVAILABLE,
                               "the server is shutting down; retry on another server")

    def _find(self, name: str) -> ServedModel:
        self._check_open()
        return rq.find_model(self.models, name, self.refused)

    def _ok(self, rpc: str, start: float) -> None:
        self.metrics.rpc_seconds.labels(rpc, "OK").observe(time.perf_counter() - start)

    async def _serve(self, rpc: str, context, prepare: Callable[[], Awaitable[Stream | None]]
                     ) -> AsyncIterator[pb.Frame]:
        """What every streaming RPC shares: `prepare` validates the request into a Stream (None: no
        request, nothing to do); StreamRun holds its slot and metrics; the model's scheduler runs its
        loop, whose frames go out as Frame messages as soon as they are final; a RequestError or a
        failure becomes the RPC's status."""
        start = time.perf_counter()
        try:
            stream = await prepare()
            if stream is None:
                self._ok(rpc, start)
                return
            with StreamRun(self, rpc, stream.model, stream.what, context) as run:
                job = stream.model.scheduler.submit(stream.loop, stream.readahead)
                reader = None if stream.feed is None else asyncio.create_task(stream.feed(job))
                try:
                    async for f in job.frames():
                        yield run.frame(f, stream.resized(f.index),
                                        stream.sizes[f.index] if stream.sizes else None,
                                        stream.levels[f.index] if stream.levels else 0)
                finally:
                    job.cancel()  # no-op when finished; else dropped at the scheduler's next step
                    if reader is not None:
                        reader.cancel()
        except Exception as exc:
            self._fail(context, rpc, start, exc)
            return
        self._ok(rpc, start)

    # --- unary -------------------------------------------------------------------------------------

    async def ListModels(self, request, context):
        start = time.perf_counter()
        try:
            self._check_open()
        except RequestError as exc:
            self._fail(context, "ListModels", start, exc)
            return None
        reply = pb.ListModelsResponse(models=[model_info(self.models[n]) for n in sorted(self.models)])
        self._ok("ListModels", start)
        return reply

    async def DescribeModel(self, request, context):
        start = time.perf_counter()
        try:
            model = self._find(request.model)
        except RequestError as exc:
            self._fail(context, "DescribeModel", start, exc)
            return None
        self._ok("DescribeModel", start)
        return model_info(model)

    # --- streaming: each handler validates its request into a Stream; _serve does the rest -----------

    async def Extrapolate(self, request, context):
        async with aclosing(self._serve("Extrapolate", context, lambda: self._extrapolate(request))) as out:
            async for frame in out:
                yield frame

    async def Generate(self, request, context):
        async with aclosing(self._serve("Generate", context, lambda: self._generate(request))) as out:
            async for frame in out:
                yield frame

    async def Project(self, request, context):
        async with aclosing(self._serve("Project", context, lambda: self._project(request))) as out:
            async for frame in out:
                yield frame

    async def Summarize(self, request, context):
        async with aclosing(self._serve("Summarize", context, lambda: self._summarize(request))) as out:
            async for frame in out:
                yield frame

    async def Upsample(self, request_iterator, context):
        async with aclosing(self._serve("Upsample", context,
                                        lambda: self._upsample(request_iterator))) as out:
            async for frame in out:
                yield frame

    async def _extrapolate(self, request) -> Stream:
        model = self._find(request.model)
        rq.require(model, "extrapolate", "a Predictor and mode video")
        count = rq.frame_count(request.frames, self.config.max_frames)
        k = rq.frame_step(request.step)
        resized = False
        if request.WhichOneof("start") == "start_image":
            policy = rq.resize_policy(request.resize)
            image, resized = rq.client_frame(request.start_image, model, policy, "start_image")
            first, origin = to_model(image), "start=client image"
        else:
            first = rq.start_frame(request.start_frame, model)
            origin = f"start=frame {request.start_frame}"
        s = rq.sampling(request.sampling, model, ("predictor",))
        what = (f"frames={count} step={k} {origin} steps={s.options.steps} {s.options.method} "
                f"correction={s.options.correction_steps} seed={s.seed}")
        return Stream(model, what, extrapolate(model.sampling, first, count, k, s.rng(), s.options),
                      resized=lambda _: resized)

    async def _generate(self, request) -> Stream:
        model = self._find(request.model)
        rq.require(model, "generate", "a Projector")
        count = rq.frame_count(request.frames, self.config.max_frames)
        roles = ("projector",)
        if count > 1:
            if "predictor" not in model.sampling.roles:
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"model {short(model.name)} has no Predictor: frames must be 1, "
                                   f"got {count}")
            roles = ("projector", "predictor")
        mode = model.bundle.manifest.mode
        s = rq.sampling(request.sampling, model, roles, generate_defaults(mode))
        what = (f"frames={count} steps={s.options.steps} {s.options.method} "
                f"correction={s.options.correction_steps} seed={s.seed}")
        clip = model.clip if mode == "video" else None  # a video's new clip starts from a clip frame
        return Stream(model, what, generate(model.sampling, model.size, count, s.rng(), s.options,
                                            clip=clip))

    # The image applications (paper section 6.2).

    async def _project(self, request) -> Stream:
        model = self._find(request.model)
        rq.require_projector(model, "project")
        image, resized = rq.required_image(request, model)
        strength = rq.strength(request)
        s = rq.sampling(request.sampling, model, ("projector",), "project")
        schedule = model.sampling["projector"].schedule
        levels = projection_levels(schedule, strength, s.options.steps)
        steps = request.intermediate_steps
        what = (f"strength={strength:g} (t={levels[0]}) intermediate_steps={str(steps).lower()} "
                f"steps={s.options.steps} {s.options.method} seed={s.seed}")
        loop = project(model.sampling, to_model(image), strength, s.rng(), s.options, intermediates=steps)
        return Stream(model, what, loop, resized=lambda _: resized, levels=levels if steps else None)

    async def _summarize(self, request) -> Stream:
        model = self._find(request.model)
        rq.require_projector(model, "summarize")
        axes = rq.summary_axes(request.axes)
        sizes = rq.summary_plan(request.scales, model, axes, self.config.max_frames)
        image, resized = rq.required_image(request, model)
        strength = rq.strength(request)
        s = rq.sampling(request.sampling, model, ("projector",), "summarize")
        h, w = sizes[-1]
        what = (f"scales={len(sizes)} to {w}x{h} axes={axes} strength={strength:g} "
                f"steps={s.options.steps} {s.options.method} seed={s.seed}")
        loop = summarize(model.sampling, to_model(image), list(request.scales), strength, s.rng(),
                         s.options, axes)
        return Stream(model, what, loop, resized=lambda _: resized, sizes=sizes)

    async def _upsample(self, requests) -> Stream | None:
        """The first message names the model; frames may come with it and in every later one. They
        reach the loop (sinfusion.sampling.upsample with a streamed input) while it interpolates."""
        first = await anext(requests, None)
        if first is None:  # the client closed without a request: nothing to do
            return None
        model = self._find(first.model)
        rq.require(model, "upsample", "an Interpolator")
        factor = rq.upsample_factor(first.factor)
        policy = rq.resize_policy(first.resize)
        s = rq.sampling(first.sampling, model, ("interpolator",), "upsample")
        what = (f"factor={factor} steps={s.options.steps} {s.options.method} "
                f"correction={s.options.correction_steps} seed={s.seed}")
        resized: list[bool] = []  # per input frame, appended as the frames are read

        def frame_resized(index: int) -> bool:  # an in-between is resized when a neighbour was
            i, between = divmod(index, factor)
            return resized[i] or (between > 0 and resized[i + 1])

        async def feed(job: Job) -> None:
            """Client frames -> the job's input, then None; an error ends the input in its place."""
            try:
                messages = [first] if first.HasField("frame") else []
                async for message in _chain(messages, requests):  # malformed: RequestError (wire)
                    if not message.HasField("frame"):
                        continue
                    where = "frame" if message is first else f"frame (input {len(resized)})"
                    image, was_resized = rq.client_frame(message.frame, model, policy, where)
                    resized.append(was_resized)
                    await job.feed(to_model(image))
                await job.feed(None)
            except RequestError as exc:
                await job.feed(exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. the client went away mid-read
                await job.feed(RuntimeError(f"reading client frames failed: {exc}"))

        loop = upsample(model.sampling, None, factor, s.rng(), s.options)
        return Stream(model, what, loop, resized=frame_resized, feed=feed,
                      readahead=UPSAMPLE_READAHEAD)


async def _chain(first: list, rest: AsyncIterator) -> AsyncIterator:
    for item in first:
        yield item
    async for item in rest:
        yield item
