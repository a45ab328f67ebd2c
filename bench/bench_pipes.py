"""CPU time per frame of the client's frame pipes: y4m write (4:4:4 and 4:2:0) and read, raw RGB24.

    OMP_NUM_THREADS=1 nice .venv/bin/python -m bench.bench_pipes [--frames 60] [--sizes 256x144,1280x720]

Frames are random RGB at each size, written to and read back from memory (no disk, no pipe), so the
figures are the conversion's cost alone: what `sinfusion` spends per frame besides waiting for the
server. Each figure is the process CPU time over all frames divided by their number.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np

from sinfusion.io.pipes import RawReader, RawWriter, Y4MReader, Y4MWriter


def per_frame_ms(fn, frames: int) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) / frames * 1e3


def bench_size(width: int, height: int, frames: int) -> dict:
    rgb = np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    out = {}
    for chroma in ("444", "420jpeg"):
        buf = io.BytesIO()
        writer = Y4MWriter(buf, 24, chroma, flush=False)
        out[f"y4m {chroma[:3]} write"] = per_frame_ms(lambda: [writer.write(f) for f in rgb], frames)
        data = buf.getvalue()
        out[f"y4m {chroma[:3]} read"] = per_frame_ms(lambda: list(Y4MReader(io.BytesIO(data))), frames)
    buf = io.BytesIO()
    writer = RawWriter(buf, flush=False)
    out["raw write"] = per_frame_ms(lambda: [writer.write(f) for f in rgb], frames)
    data = buf.getvalue()
    out["raw read"] = per_frame_ms(lambda: list(RawReader(io.BytesIO(data), width, height)), frames)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--sizes", default="256x144,1280x720", help="comma-separated WxH")
    args = parser.parse_args()
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        figures = bench_size(width, height, args.frames)
        print(f"{width}x{height}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in figures.items()))


if __name__ == "__main__":
    main()
