"""Drive several sampling loops in lock-step, one batched engine call per step.

The loops themselves are sinfusion.sampling's; this only decides how their StepRequests reach the
runtime (like sampling.run, but for many loops at once, grouping requests that share a batch key).
Each loop owns its random Generator, so its frames are the same as when it runs alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from sinfusion.sampling import Frame, Loop, StepRequest, run_requests

FrameCallback = Callable[[int, Frame], None]  # (loop index, frame)


def run_lockstep(loops: Sequence[Loop], denoiser: Callable,
                 on_frame: FrameCallback | None = None) -> list:
    """Run every loop to its end; returns each loop's return value, in order.

    Frames a loop yields are handed to `on_frame` (if given) as soon as they are final.
    """
    values: list = [None] * len(loops)
    replies: dict[int, np.ndarray | None] = {i: None for i in range(len(loops))}
    while replies:
        pending: dict[tuple, list[tuple[int, StepRequest]]] = {}
        for i in list(replies):
            reply = replies.pop(i)
            try:
                event = loops[i].send(reply)
                while isinstance(event, Frame):  # frames need no engine call: advance at once
                    if on_frame is not None:
                        on_frame(i, event)
                    event = loops[i].send(None)
            except StopIteration as stop:
                values[i] = stop.value
                continue
            pending.setdefault(event.batch_key, []).append((i, event))
        for group in pending.values():
            outs = run_requests(denoiser, [req for _, req in group])
            for (i, _), out in zip(group, outs):
                replies[i] = out
    return values
