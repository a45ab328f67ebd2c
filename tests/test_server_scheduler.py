"""The scheduler and runtime selection without gRPC: batching plans, batching, seeds, cancellation."""

from __future__ import annotations

import asyncio
import itertools
import threading

import numpy as np
import pytest

from sinfusion.frames import to_model, to_uint8
from sinfusion.sampling import SamplingOptions, extrapolate, run
from sinfusion.server.config import ConfigError
from sinfusion.server.served import load_models
from sinfusion.server.runtimes import select_runtime
from sinfusion.server.scheduler import Scheduler, plan_batches
from tests.conftest import make_tiny_bundle

FAST = SamplingOptions(steps=2, method="ddim", correction_steps=1)


@pytest.fixture
def model(tmp_path):
    """The tiny bundle on the PyTorch CPU runtime, as the server loads it (no server around it)."""
    make_tiny_bundle(tmp_path / "m" / "tiny")
    return load_models(tmp_path / "m", "torch-cpu", max_batch=8)[0]["tiny"]


def test_plan_batches():
    assert plan_batches(1, (1, 2, 4, 8)) == [(1, 1)]
    assert plan_batches(11, (1, 2, 4, 8)) == [(8, 8), (3, 3)]
    assert plan_batches(3, (1, 2, 4, 8), fixed=True) == [(3, 8)]
    assert plan_batches(9, (4,), fixed=True) == [(4, 4), (4, 4), (1, 4)]


def test_auto_runtime_without_engines_is_torch_cpu(tiny_bundle):
    assert select_runtime(tiny_bundle, "auto", 4).name == "torch-cpu"
    with pytest.raises(ConfigError, match="onnxruntime-cpu: .*no onnx engines"):
        select_runtime(tiny_bundle, "onnxruntime-cpu", 4)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="torch-cuda: no CUDA device"):
            select_runtime(tiny_bundle, "torch-cuda", 4)


def drive(model, seeds: list[int], frames: int, fixed: bool) -> tuple[list[list[bytes]], list[int]]:
    """Run one extrapolation per seed concurrently through a scheduler; returns frames, batch sizes."""
    batches = []

    async def main():
        scheduler = Scheduler(model.name, model.runtime, fixed,
                              on_batch=lambda role, live, size, sec: batches.append(live))
        scheduler.start()
        start = to_model(model.clip[0])
        jobs = [scheduler.submit(extrapolate(model.sampling, start, frames, 1, np.random.default_rng(s),
                                             FAST)) for s in seeds]
        out = []
        for job in jobs:
            out.append([f.rgb async for f in job.frames()])
        await scheduler.close()
        return out

    return asyncio.run(main()), batches


def test_scheduler_batches_streams_with_their_own_generators(model):
    out, batches = drive(model, [1, 2, 3, 4], 3, fixed=True)
    assert max(batches) == 4  # all four streams shared every engine call
    # The reference: each seed alone through the core's plain batch-1 driver.
    start = to_model(model.clip[0])
    for seed, frames in zip([1, 2, 3, 4], out):
        alone = [to_uint8(f.image).tobytes() for f in run(
            extrapolate(model.sampling, start, 3, 1, np.random.default_rng(seed), FAST),
            model.runtime.denoiser)]
        assert len(frames) == 3
        a = np.frombuffer(b"".join(alone), np.uint8).astype(int)
        b = np.frombuffer(b"".join(frames), np.uint8)
        assert np.abs(a - b).max() <= 2  # batch-1 vs batch-8 kernels round differently
    # Fixed batch: the same seed in any company gives the same bytes.
    again, _ = drive(model, [9, 2], 3, fixed=True)
    assert again[1] == out[1]


def test_cancelled_job_is_dropped_and_others_continue(model):
    async def main():
        scheduler = Scheduler(model.name, model.runtime)
        scheduler.start()
        start = to_model(model.clip[0])
        doomed = scheduler.submit(extrapolate(model.sampling, start, 500, 1, np.random.default_rng(1), FAST))
        other = scheduler.submit(extrapolate(model.sampling, start, 3, 1, np.random.default_rng(2), FAST))
        async for _ in doomed.frames():
            doomed.cancel()
            break
        frames = [f async for f in other.frames()]
        held = scheduler.held
        await scheduler.close()
        return frames, held, doomed.steps

    frames, held, steps = asyncio.run(main())
    assert len(frames) == 3 and held == 0
    assert steps < 20  # stopped within a few steps of the cancel, not after 500 frames


def test_a_batchs_streams_advance_side_by_side_and_a_failing_one_ends_alone(model):
    """After a batched call each stream runs to its next request on the advancer pool, not the
    engine thread; a loop that fails there ends its own stream with the error, the others finish."""
    threads = set()

    def failing(loop, after: int):
        reply = None
        for n in itertools.count():
            item = loop.send(reply)
            threads.add(threading.current_thread().name)
            if n == after:
                raise ValueError("this loop refuses to go on")
            reply = yield item

    async def main():
        scheduler = Scheduler(model.name, model.runtime)
        scheduler.start()
        start = to_model(model.clip[0])
        loops = [extrapolate(model.sampling, start, 3, 1, np.random.default_rng(s), FAST)
                 for s in (1, 2, 3)]
        jobs = [scheduler.submit(failing(loops[0], 3))] + [scheduler.submit(lp) for lp in loops[1:]]
        outcome = []
        for job in jobs:
            try:
                outcome.append(len([f async for f in job.frames()]))
            except ValueError as exc:
                outcome.append(str(exc))
        await scheduler.close()
        return outcome

    assert asyncio.run(main()) == ["this loop refuses to go on", 3, 3]
    assert any(name.startswith("advance-") for name in threads)


def test_staggered_streams_fall_into_step(model):
    """A stream that starts mid-frame of another joins its engine calls within a frame or so."""
    options = SamplingOptions(steps=4, method="ddim", correction_steps=2)  # 6 engine calls per frame
    calls = []

    async def main():
        scheduler = Scheduler(model.name, model.runtime,
                              on_batch=lambda role, live, size, sec: calls.append(live))
        scheduler.start()
        start = to_model(model.clip[0])
        first = scheduler.submit(extrapolate(model.sampling, start, 20, 1, np.random.default_rng(1), options))
        frames = first.frames()
        await anext(frames)
        for _ in range(2):  # let the first stream run into its next frame: the two are out of step
            await asyncio.sleep(0)
        second = scheduler.submit(extrapolate(model.sampling, start, 20, 1, np.random.default_rng(2),
                                              options))
        async def count(stream):  # both clients read as they go (a stalled one would pause)
            return len([f async for f in stream])

        counts = await asyncio.gather(count(frames), count(second.frames()))
        await scheduler.close()
        return [1 + counts[0], counts[1]]

    assert asyncio.run(main()) == [20, 20]
    assert len(calls) / 40 < 4.0  # unbatched: 6 calls per frame; in step: about 3
    assert calls.count(2) > 0.8 * calls.count(1)


def held_in_first_step(loop, inside: threading.Event, release: threading.Event, events: list[str]):
    """`loop`, but its first step's output stops inside the generator, on the worker thread that
    advances it, until `release`; `events` records the end of that step and the loop's closing."""
    try:
        reply = yield next(loop)
        inside.set()
        release.wait(30)
        request = loop.send(reply)
        events.append("step done")
        yield request
        events.append("advanced after close")
    except GeneratorExit:
        events.append("closed")
        raise
    finally:
        loop.close()


def test_close_waits_for_the_step_in_flight(model):
    """Shutdown while the worker is advancing a job: its loop is closed after, not during, that
    step (closing a generator that is running raises). The worker is held inside the loop until
    close() has been called, so the overlap happens on every run."""
    inside, release, events = threading.Event(), threading.Event(), []

    async def main():
        scheduler = Scheduler(model.name, model.runtime)
        scheduler.start()
        loop = extrapolate(model.sampling, to_model(model.clip[0]), 500, 1, np.random.default_rng(0), FAST)
        scheduler.submit(held_in_first_step(loop, inside, release, events))
        try:
            assert await asyncio.to_thread(inside.wait, 30), "the worker never ran the first step"
            closing = asyncio.create_task(scheduler.close())
            done, _ = await asyncio.wait({closing}, timeout=0.2)
            assert not done, "close() returned while the worker was inside the job's loop"
        finally:
            release.set()
        await closing  # must not close the loop the worker is running
        return scheduler.held

    assert asyncio.run(main()) == 0
    assert events == ["step done", "closed"]


def test_unread_job_pauses_at_its_runahead_and_yields_the_engine(model):
    """Backpressure: a job whose frames nobody takes stops stepping; the others run on alone."""
    from sinfusion.server.scheduler import RUNAHEAD

    async def main():
        scheduler = Scheduler(model.name, model.runtime)
        scheduler.start()
        start = to_model(model.clip[0])
        stalled = scheduler.submit(extrapolate(model.sampling, start, 100, 1, np.random.default_rng(1), FAST))
        reader = stalled.frames()
        await anext(reader)  # the client reads one frame, then stalls
        other = scheduler.submit(extrapolate(model.sampling, start, 12, 1, np.random.default_rng(2), FAST))
        others = [f async for f in other.frames()]  # 12 frames: plenty of rounds for the stalled one
        paused_at = (stalled.steps, stalled.unread, stalled.paused)
        rest = [f async for f in reader]  # the client reads again: the job resumes to its end
        await scheduler.close()
        return len(others), paused_at, 1 + len(rest)

    others, (steps, unread, paused), total = asyncio.run(main())
    assert others == 12 and total == 100
    assert paused and unread == RUNAHEAD
    # 1 read + RUNAHEAD held frames of 3 steps each (FAST: 2 + 1 correction), not 12 frames' worth.
    assert steps <= 3 * (1 + RUNAHEAD)
