"""Where a batch of streams spends its host time between engine calls: the loops' own work.

    python -m bench.bench_advance [--streams 8] [--size 256x144] [--frames 8] [--runtime host|resident]
        [--threads 2] [--top 12 (0: all)]

Drives `--streams` extrapolation loops (DDIM 10 + 3 correction, distinct seeds) by hand as the
server's scheduler does (one batched engine call, then each loop advanced to its next request and
its finished frames turned into wire bytes), on a bundle of random networks (2 blocks x 4 channels:
the engine is cheap, so the rest shows), and prints the engine's and the advancing's milliseconds
per call, then a cProfile of the advancing, serial, in one thread. `--runtime resident` keeps the
frames as torch tensors between steps (the torch-cuda runtime's path, on the CPU); `host` is numpy.
numpy's random Generator is compiled code that cProfile does not see: its draws are counted in the
Python functions that make them (`sampling.denoise` for a frame's start noise,
`sampling.noise_to_level` for the correction's). docs/gpu.md reads it.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

from sinfusion.io.cli import size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--size", type=size, default=(256, 144), help="frame size WxH (default 256x144)")
    p.add_argument("--frames", type=int, default=8, help="frames per stream")
    p.add_argument("--runtime", choices=("host", "resident"), default="resident")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=12, help="profile lines shown (0: all)")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from bench.bench_server import make_bundle
    from sinfusion import arrays
    from sinfusion.frames import to_model
    from sinfusion.runtimes.torch_compiled import CompiledTorchDenoiser
    from sinfusion.runtimes.torch_runtime import TorchDenoiser
    from sinfusion.sampling import SamplingOptions, Stepper, extrapolate, run_requests

    torch.set_num_threads(args.threads)
    width, height = args.size
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(Path(tmp) / "b", channels=4, blocks=2, height=height, width=width)
        denoiser = (CompiledTorchDenoiser(bundle, "cpu", compile=False, batch_sizes=(1, args.streams))
                    if args.runtime == "resident" else TorchDenoiser(bundle))
        options = SamplingOptions(steps=10, method="ddim", correction_steps=3)
        start = to_model(bundle.frames()[0])
        steppers = [Stepper(extrapolate(bundle.sampling(), start, args.frames, 1,
                                        np.random.default_rng(seed), options))
                    for seed in range(args.streams)]
        for stepper in steppers:  # run each loop to its first request
            stepper.advance(None)
        profile = cProfile.Profile()
        engine = advancing = 0.0
        calls = frames = 0
        while all(s.pending is not None for s in steppers):
            began = time.perf_counter()
            outputs = run_requests(denoiser, [s.pending for s in steppers])
            called = time.perf_counter()
            profile.enable()
            for stepper, out in zip(steppers, outputs):
                for frame in stepper.advance(out):
                    arrays.to_uint8(frame.image).tobytes()  # as the scheduler's wire frames
                    frames += 1
            profile.disable()
            engine += called - began
            advancing += time.perf_counter() - called
            calls += 1
    print(f"{args.streams} streams at {width}x{height}, {args.runtime}: {calls} calls, {frames} frames; "
          f"engine {1e3 * engine / calls:.2f} ms a call, advancing {1e3 * advancing / calls:.2f} ms a "
          f"call ({1e3 * advancing / frames:.2f} ms a frame)")
    pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(
        *([args.top] if args.top else []))
    print(f"command: python -m bench.bench_advance {' '.join(sys.argv[1:] if argv is None else argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
