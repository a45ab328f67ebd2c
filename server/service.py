"""The grpc.aio servicer of sinfusion.v1.SinFusion: converts messages and maps errors to status codes.

The work lives elsewhere: requests (validation), models (bundles and runtimes), scheduler (batched
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

import grpc

from sinfusion.frames import to_model
from sinfusion.sampling import (extrapolate, generate, interpolate_between, project,
                                projection_levels, summarize)
from sinfusion.v1 import sinfusion_pb2 as pb
from sinfusion.v1 import sinfusion_pb2_grpc as pb_grpc

from . import requests as rq
from .config import ServerConfig
from .metrics import Metrics
from .models import MAX_STEP, RefusedBundle, ServedModel, short
from .requests import RequestError
from .scheduler import WireFrame

log = logging.getLogger("sinfusion.server")

UPSAMPLE_READAHEAD = 4  # client frames buffered ahead of interpolation; beyond it gRPC flow control


def model_info(model: ServedModel) -> pb.ModelInfo:
    m = model.bundle.manifest
    return pb.ModelInfo(
        name=model.name, width=m.width, height=m.height, fps=m.fps, frame_count=m.frame_count,
        capabilities=model.capabilities, runtime=model.runtime.name, roles=model.roles,
        schedule_steps=model.schedule_steps, default_correction_steps=m.correction_steps,
        batch_sizes=model.batch_sizes, mode=m.mode, max_step=MAX_STEP,
        quality=quality_info(m.quality),
    )


def quality_info(record: dict) -> pb.NextFrameQuality | None:
    """The manifest's "quality" record (trainer/monitor.py) as the wire message; None when absent."""
    if not record:
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

    def frame(self, index: int, rgb: bytes, synthesized: bool, resized: bool,
              size: tuple[int, int] | None = None, noise_level: int = 0) -> pb.Frame:
        """A Frame message at the model's size, or at `size` (height, width): Summarize's."""
        if self.first is None:
            self.first = time.perf_counter() - self.start
            self.service.metrics.first_frame.labels(self.model.name, self.rpc).observe(self.first)
        self.count += 1
        self.service.metrics.frames.labels(self.model.name, self.rpc, str(synthesized).lower()).inc()
        h, w = size or self.model.size
        return pb.Frame(index=index, width=w, height=h, rgb=rgb, synthesized=synthesized,
                        resized=resized, noise_level=noise_level)

    def wire(self, f: WireFrame, resized: bool, size: tuple[int, int] | None = None,
             noise_level: int = 0) -> pb.Frame:
        return self.frame(f.index, f.rgb, f.synthesized, resized, size, noise_level)

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

    async def _forward(self, run: StreamRun, model: ServedModel, loop, resized: bool,
                       sizes: list | None = None, levels: list[int] | None = None):
        """Submit a loop to the model's scheduler and yield its frames as Frame messages.

        `sizes` and `levels`, indexed by frame index, give frames not at the model's size their size
        (Summarize) and intermediate frames their noise level (Project); the scheduler carries bytes only.
        """
        job = model.scheduler.submit(loop)
        try:
            async for f in job.frames():
                yield run.wire(f, resized, sizes[f.index] if sizes else None,
                               levels[f.index] if levels else 0)
        finally:
            job.cancel()  # no-op when finished; else dropped at the scheduler's next step

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

    # --- server streaming -------------------------------------------------------------------------

    async def Extrapolate(self, request, context):
        start = time.perf_counter()
        try:
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
            with StreamRun(self, "Extrapolate", model, what, context) as run:
                loop = extrapolate(model.models, first, count, k, s.rng(), s.options)
                async for frame in self._forward(run, model, loop, resized):
                    yield frame
        except Exception as exc:
            self._fail(context, "Extrapolate", start, exc)
            return
        self._ok("Extrapolate", start)

    async def Generate(self, request, context):
        start = time.perf_counter()
        try:
            model = self._find(request.model)
            rq.require(model, "generate", "a Projector")
            count = rq.frame_count(request.frames, self.config.max_frames)
            roles = ("projector",)
            if count > 1:
                if "predictor" not in model.models.roles:
                    raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                       f"model {short(model.name)} has no Predictor: frames must be 1, "
                                       f"got {count}")
                roles = ("projector", "predictor")
            s = rq.sampling(request.sampling, model, roles)
            what = (f"frames={count} steps={s.options.steps} {s.options.method} "
                    f"correction={s.options.correction_steps} seed={s.seed}")
            with StreamRun(self, "Generate", model, what, context) as run:
                loop = generate(model.models, model.size, count, s.rng(), s.options)
                async for frame in self._forward(run, model, loop, False):
                    yield frame
        except Exception as exc:
            self._fail(context, "Generate", start, exc)
            return
        self._ok("Generate", start)

    # --- the image applications (paper section 6.2) --------------------------------------------------

    async def Project(self, request, context):
        start = time.perf_counter()
        try:
            model = self._find(request.model)
            rq.require_projector(model, "project")
            image, resized = rq.required_image(request, model)
            strength = rq.strength(request)
            s = rq.sampling(request.sampling, model, ("projector",))
            schedule = model.models["projector"].schedule
            levels = projection_levels(schedule, strength, s.options.steps)
            steps = request.intermediate_steps
            what = (f"strength={strength:g} (t={levels[0]}) intermediate_steps={str(steps).lower()} "
                    f"steps={s.options.steps} {s.options.method} seed={s.seed}")
            with StreamRun(self, "Project", model, what, context) as run:
                loop = project(model.models, to_model(image), strength, s.rng(), s.options,
                               intermediates=steps)
                async for frame in self._forward(run, model, loop, resized,
                                                 levels=levels if steps else None):
                    yield frame
        except Exception as exc:
            self._fail(context, "Project", start, exc)
            return
        self._ok("Project", start)

    async def Summarize(self, request, context):
        start = time.perf_counter()
        try:
            model = self._find(request.model)
            rq.require_projector(model, "summarize")
            axes = rq.summary_axes(request.axes)
            sizes = rq.summary_plan(request.scales, model, axes, self.config.max_frames)
            image, resized = rq.required_image(request, model)
            strength = rq.strength(request)
            s = rq.sampling(request.sampling, model, ("projector",))
            h, w = sizes[-1]
            what = (f"scales={len(sizes)} to {w}x{h} axes={axes} strength={strength:g} "
                    f"steps={s.options.steps} {s.options.method} seed={s.seed}")
            with StreamRun(self, "Summarize", model, what, context) as run:
                loop = summarize(model.models, to_model(image), list(request.scales), strength,
                                 s.rng(), s.options, axes)
                async for frame in self._forward(run, model, loop, resized, sizes=sizes):
                    yield frame
        except Exception as exc:
            self._fail(context, "Summarize", start, exc)
            return
        self._ok("Summarize", start)

    # --- bidirectional streaming -------------------------------------------------------------------

    async def Upsample(self, request_iterator, context):
        start = time.perf_counter()
        reader = None
        try:
            first = await anext(request_iterator, None)
            if first is None:  # the client closed without a request: nothing to do
                self._ok("Upsample", start)
                return
            model = self._find(first.model)
            rq.require(model, "upsample", "an Interpolator")
            factor = rq.upsample_factor(first.factor)
            policy = rq.resize_policy(first.resize)
            s = rq.sampling(first.sampling, model, ("interpolator",))
            what = (f"factor={factor} steps={s.options.steps} {s.options.method} "
                    f"correction={s.options.correction_steps} seed={s.seed}")
            with StreamRun(self, "Upsample", model, what, context) as run:
                inputs: asyncio.Queue = asyncio.Queue(UPSAMPLE_READAHEAD)
                reader = asyncio.create_task(self._read_frames(first, request_iterator, model,
                                                               policy, inputs))
                rng = s.rng()  # one generator for the whole stream, as in sinfusion.sampling.upsample
                prev, index = None, 0
                while (item := await inputs.get()) is not None:
                    if isinstance(item, Exception):
                        raise item
                    image, resized = item
                    current = to_model(image)
                    if prev is not None:
                        loop = interpolate_between(model.models, prev[0], current, factor, rng,
                                                   s.options, index)
                        async for frame in self._forward(run, model, loop, prev[1] or resized):
                            yield frame
                        index += factor - 1
                    yield run.frame(index, image.tobytes(), False, resized)
                    index += 1
                    prev = (current, resized)
        except Exception as exc:
            self._fail(context, "Upsample", start, exc)
            return
        finally:
            if reader is not None:
                reader.cancel()
        self._ok("Upsample", start)

    async def _read_frames(self, first, request_iterator, model: ServedModel, policy: int,
                           inputs: asyncio.Queue) -> None:
        """Client frames -> (uint8 image, resized) on `inputs`, then None; an error ends the queue."""
        n = 0
        try:
            if first.HasField("frame"):
                await inputs.put(rq.client_frame(first.frame, model, policy, "frame"))
                n += 1
            async for request in request_iterator:  # malformed ones raise RequestError (wire)
                if not request.HasField("frame"):
                    continue
                await inputs.put(rq.client_frame(request.frame, model, policy, f"frame (input {n})"))
                n += 1
            await inputs.put(None)
        except RequestError as exc:
            await inputs.put(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # e.g. the client went away mid-read
            await inputs.put(RuntimeError(f"reading client frames failed: {exc}"))
