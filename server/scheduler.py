"""The stream scheduler: many live streams, one engine, batched diffusion steps.

Each stream is a loop from sinfusion.sampling (a generator of StepRequests and Frames) with its own
random generator, wrapped in a `Job`. One scheduler per served model runs as an asyncio task:

    round: prime new jobs (run them to their first StepRequest) and hand jobs that asked for their
           next input frame (a streamed Upsample) the frame their RPC has read meanwhile
           group the pending request of every live, unpaused job by StepRequest.batch_key (role, shape)
           pick one group: the largest (on a tie, not the Projector's), or the group of a job
           passed over MAX_WAIT rounds
           run it with sinfusion.sampling.run_requests in the scheduler's worker thread, in calls of
           at most the engine's largest batch (plan_batches), hand every job its slice, advance it
           to its next request and queue the frames it finished

Running one group per round (not every group) is what makes streams share calls: a frame is a run of
Predictor (or Interpolator) steps then a few Projector (correction) steps, and streams that started
at different times sit at different roles. Passing the smaller group over lets it fall in step with
the larger one. On a tie the long phase goes first: a stream still predicting catches up with one
waiting at its correction, and from then on they move together. After a few rounds each round is one
full engine call (a simulation of 2, 4 and 8 staggered streams with 10 + 3 steps per frame gave
1.03-1.08x the ideal calls per frame with this rule, 1.3x when ties alternate). MAX_WAIT bounds how
long any stream waits (e.g. a lone upsampling stream beside many extrapolations).

Backpressure: a job holding RUNAHEAD finished frames that its RPC has not handed to gRPC yet is
paused: it joins no group until its client reads (gRPC flow control stops the RPC's writes when the
client does not), so a stalled client costs its stream no compute beyond RUNAHEAD frames and gives
its place in the batch to the others.

The event loop never blocks on an engine. A cancelled job is dropped before the next call it would
have joined. Random draws happen inside each job's own loop with its own generator, so batching
changes no draw. After an engine call the batch's jobs are advanced to their next requests side by
side on a small thread pool (each job by one thread): the host work of a loop between two requests
(noise draws, the colour lock, uint8 conversion) is mostly numpy, which runs without the GIL, so a
batch's share of it overlaps between engine calls as far as the host's cores allow instead of
adding up (docs/server.md, docs/gpu.md).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from sinfusion import arrays
from sinfusion.sampling import Loop, Stepper, run_requests

from .runtimes import LoadedRuntime

log = logging.getLogger("sinfusion.server")

_END = object()  # queue marker: the job's loop finished
_NONE_YET = object()  # a job waits for an input frame that has not arrived
MAX_WAIT = 4  # rounds a pending request may be passed over before its group goes next
RUNAHEAD = 2  # finished frames a job may hold before its consumer takes them; then it pauses
ADVANCE_THREADS = min(8, os.cpu_count() or 1)  # jobs of a batch advanced at once after its call


@dataclass
class WireFrame:
    """A finished frame, already converted to the wire layout (RGB24 bytes) in the worker thread."""

    index: int
    rgb: bytes
    synthesized: bool


def plan_batches(count: int, sizes: tuple[int, ...], fixed: bool = False) -> list[tuple[int, int]]:
    """Split `count` same-key requests into engine calls: [(requests taken, batch passed)].

    Calls take at most the largest engine batch. By default a call passes exactly its requests and
    the runtime fits them to its engines (the fixed-shape runtimes split or zero-pad with their own
    cost model, sinfusion/runtimes/fixed.py). With `fixed`, every call is padded to the largest size,
    so a sample's arithmetic never depends on how many streams were live: seeded streams are then
    bit-identical alone or batched (kernels of different batch sizes round differently), at the cost
    of computing the padding.
    """
    calls = []
    largest = sizes[-1]
    while count > 0:
        take = min(count, largest)
        calls.append((take, largest if fixed else take))
        count -= take
    return calls


class Job(Stepper):
    """One stream's loop inside the scheduler. The consumer iterates `frames()`; `cancel()` drops it."""

    _ids = itertools.count(1)

    def __init__(self, loop: Loop, runahead: int = RUNAHEAD,
                 on_room: Callable[[], None] | None = None, readahead: int = 0) -> None:
        super().__init__(loop, host_frames=False)  # frames become uint8 where they are (advance_wire)
        self.id = next(self._ids)
        self.runahead = runahead
        # A streamed-input loop's frames, read ahead of it up to `readahead` (then gRPC flow control).
        self._inputs: asyncio.Queue | None = asyncio.Queue(readahead) if readahead else None
        self.unread = 0  # finished frames queued or being handed over, not yet taken by the consumer
        self._on_room = on_room  # wakes the scheduler: a paused job may run again, or must be dropped
        self.started = False
        self.cancelled = False
        self.steps = 0
        self.waited = 0  # rounds this job's pending request was passed over
        self._queue: asyncio.Queue = asyncio.Queue()

    def cancel(self) -> None:
        """Stop scheduling this job; the scheduler closes its loop before its next engine call."""
        if not self.cancelled and not self.finished and self._on_room is not None:
            self._on_room()  # a paused job's scheduler may be idle: wake it to drop this one
        self.cancelled = True

    async def feed(self, item: np.ndarray | BaseException | None) -> None:
        """The loop's next input frame (model layout), None at the end of the input, or the error
        that ended reading it (raised to the consumer in its turn, after the frames before it)."""
        await self._inputs.put(item)
        if self._on_room is not None:
            self._on_room()

    def next_input(self) -> object:
        """The input to hand the loop now, or _NONE_YET while the RPC has read none."""
        if self._inputs is None or self._inputs.empty():
            return _NONE_YET
        return self._inputs.get_nowait()

    @property
    def paused(self) -> bool:
        """Holding its run-ahead: no more steps until the consumer takes a frame."""
        return self.unread >= self.runahead

    async def frames(self) -> AsyncIterator[WireFrame]:
        """The job's frames as they become final; re-raises an error of its loop or engine."""
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            # The consumer is back for the next one: this frame is handed over (to gRPC).
            self.unread -= 1
            if self.unread == self.runahead - 1 and self._on_room is not None:
                self._on_room()

    # --- worker-thread side ---------------------------------------------------------------------

    def advance_wire(self, reply: np.ndarray | None) -> list[WireFrame]:
        """Stepper.advance, with the frames converted to the wire layout. Worker thread only.

        A device runtime's frame is converted to uint8 on its device: it crosses to the host once,
        as the bytes that go on the wire."""
        self.started = True
        return [WireFrame(f.index, arrays.to_uint8(f.image).tobytes(), f.synthesized)
                for f in self.advance(reply)]


BatchHook = Callable[[str, int, int, float], None]  # (role, live requests, engine batch, seconds)


class Scheduler:
    """Batches the diffusion steps of every live job of one model onto its runtime."""

    def __init__(self, model: str, runtime: LoadedRuntime, fixed_batch: bool = False,
                 on_batch: BatchHook | None = None) -> None:
        self.model = model
        self.runtime = runtime
        self.fixed_batch = fixed_batch
        self.on_batch = on_batch
        self._jobs: list[Job] = []
        self._wake = asyncio.Event()
        # One worker thread per model: engine calls of a model never overlap, jobs never race.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"engine-{model}")
        # Used by that worker alone, between engine calls: a job is advanced by one thread at a time.
        self._advancers = ThreadPoolExecutor(ADVANCE_THREADS, thread_name_prefix=f"advance-{model}")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"scheduler-{self.model}")

    async def close(self) -> None:
        """Stop scheduling; waits for an engine call in flight, then closes every loop."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        # A cancelled round may leave its engine call running in the worker: let it finish (off the
        # event loop) before touching the loops it is advancing.
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        self._advancers.shutdown(wait=True)  # idle: only the worker, now stopped, submits to it
        for job in self._jobs:
            job.loop.close()
        self._jobs.clear()

    def submit(self, loop: Loop, readahead: int = 0) -> Job:
        """Add a stream's loop; its frames arrive through the returned job. A streamed-input loop
        (sinfusion.sampling.NEXT_INPUT) gets its input through Job.feed, `readahead` frames ahead."""
        job = Job(loop, on_room=self._wake.set, readahead=readahead)
        self._jobs.append(job)
        self._wake.set()
        return job

    @property
    def live(self) -> int:
        """Jobs still being scheduled (cancelled ones no longer count)."""
        return sum(1 for j in self._jobs if not (j.finished or j.cancelled))

    @property
    def jobs(self) -> tuple[Job, ...]:
        """The jobs held now (a snapshot, for tests and diagnostics)."""
        return tuple(self._jobs)

    @property
    def held(self) -> int:
        """Jobs the scheduler still holds, cancelled ones included until their loop is closed."""
        return len(self._jobs)

    # --- the loop ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while await self._round():
                pass

    def _drop_dead(self) -> None:
        keep = []
        for job in self._jobs:
            if job.cancelled and not job.finished:
                job.loop.close()  # runs the loop's finally blocks; frees its arrays
                job.finished = True
                log.debug("model %s: job %d dropped after %d steps", self.model, job.id, job.steps)
            if not job.finished:
                keep.append(job)
        self._jobs = keep

    def _choose(self) -> list[Job]:
        """The group of pending jobs to run next (see the module docstring), oldest jobs first."""
        groups: dict[tuple, list[Job]] = {}
        for job in self._jobs:
            if job.pending is not None and not job.cancelled and not job.paused:
                groups.setdefault(job.pending.batch_key, []).append(job)
        if not groups:
            return []
        starved = max((j for g in groups.values() for j in g), key=lambda j: j.waited)
        if starved.waited >= MAX_WAIT:
            chosen = groups[starved.pending.batch_key]
        else:  # the largest group; on a tie not the Projector's (see the module docstring)
            chosen = max(groups.values(), key=lambda g: (len(g), g[0].pending.role != "projector",
                                                         sum(j.waited for j in g)))
        for group in groups.values():
            for job in group:
                job.waited = 0 if group is chosen else job.waited + 1
        return chosen

    async def _round(self) -> bool:
        """One step for one group of jobs; False when there was nothing to do."""
        loop = asyncio.get_running_loop()
        self._drop_dead()
        ready = self._ready()
        if ready:
            results = await loop.run_in_executor(self._executor, self._feed, ready)
            self._deliver(results)
            self._drop_dead()
        jobs = self._choose()
        if not jobs:
            return bool(ready)  # a fed job may want its next input, which may be waiting already
        sizes = self.runtime.batch_sizes[jobs[0].pending.role]
        for take, size in plan_batches(len(jobs), sizes, self.fixed_batch):
            chunk, jobs = jobs[:take], jobs[take:]
            chunk = [j for j in chunk if not j.cancelled]
            if not chunk:
                continue
            if not self.fixed_batch:  # a cancellation may have shrunk the chunk
                size = len(chunk)
            results = await loop.run_in_executor(self._executor, self._step, chunk, size)
            self._deliver(results)
        return True

    def _ready(self) -> list[tuple[Job, np.ndarray | None]]:
        """Jobs to advance without an engine call: new ones, and unpaused ones whose input came."""
        ready = []
        for job in self._jobs:
            if not job.started:
                ready.append((job, None))
            elif job.needs_input and not job.paused:
                item = job.next_input()
                if isinstance(item, BaseException):  # reading the input failed: end with that error
                    job.loop.close()
                    job.finished = True
                    self._deliver([(job, item)])
                elif item is not _NONE_YET:
                    ready.append((job, item))
        return ready

    def _feed(self, ready: list[tuple[Job, np.ndarray | None]]
              ) -> list[tuple[Job, list | BaseException]]:
        """Advance jobs to their next request with what they wait for. Worker thread."""
        results = []
        for job, item in ready:
            try:
                results.append((job, job.advance_wire(item)))
            except Exception as exc:  # a loop that refuses its arguments fails alone
                job.finished = True
                results.append((job, exc))
        return results

    def _step(self, chunk: list[Job], size: int) -> list[tuple[Job, list | BaseException]]:
        """One engine call for `chunk` (padded to `size`), then advance each job. Worker thread."""
        requests = [j.pending for j in chunk]
        padded = requests + [requests[-1]] * (size - len(requests))  # padding rows are discarded
        start = time.perf_counter()
        try:
            outputs = run_requests(self.runtime.denoiser, padded)
        except Exception as exc:
            log.exception("model %s: engine call failed (role %s, batch %d)",
                          self.model, requests[0].role, size)
            for job in chunk:
                job.finished = True
            return [(job, RuntimeError(f"engine failure: {exc}")) for job in chunk]
        elapsed = time.perf_counter() - start
        if self.on_batch is not None:
            self.on_batch(requests[0].role, len(chunk), size, elapsed)
        if len(chunk) == 1:
            return [self._advance(chunk[0], outputs[0])]
        return list(self._advancers.map(self._advance, chunk, outputs))

    @staticmethod
    def _advance(job: Job, out) -> tuple[Job, list | BaseException]:
        """Hand a job its engine output and run it to its next request. Worker or advancer thread."""
        job.steps += 1
        try:
            return job, job.advance_wire(out)
        except Exception as exc:  # a loop that refuses its arguments fails alone
            job.finished = True
            return job, exc

    def _deliver(self, results: list[tuple[Job, list | BaseException]]) -> None:
        for job, frames in results:
            if isinstance(frames, BaseException):
                job._queue.put_nowait(frames)
                continue
            for frame in frames:
                job._queue.put_nowait(frame)
            job.unread += len(frames)
            if job.finished:
                job._queue.put_nowait(_END)
