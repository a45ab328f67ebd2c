"""Time per diffusion step: PyTorch eager vs ONNX Runtime, on the CPU, in one run.

    nice .venv/bin/python -m bench.bench_step [--threads 1] [--repeats 5] [--batch 1]

Two networks: the tests' tiny one (2 blocks, 8 channels) and the paper's (16 blocks, 64 channels),
both at the paper's 144x256 frame size, as the Predictor (conditioning frame and k: the largest input).
Weights are random: the time of a step does not depend on their values. Both runtimes run the same
DiffusionStep (the ONNX engine is exported by export.onnx_export) on the same inputs with the same
number of threads; each figure is the median of `repeats` timed steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocations, kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_network(name: str, channels: int, blocks: int, batch: int, height: int, width: int,
                  threads: int, repeats: int) -> dict:
    import onnxruntime as ort
    import torch

    from sinfusion.config import default_config
    from sinfusion.export.onnx_export import to_onnx
    from sinfusion.export.parity import parity_inputs, torch_step
    from sinfusion.network import DiffusionStep, SinFusionNet
    from sinfusion.sampling import RoleSampling
    from sinfusion.schedule import make_schedule

    torch.manual_seed(0)
    config = default_config("predictor", channels=channels, blocks=blocks)
    step = DiffusionStep(SinFusionNet(config).eval())
    rs = RoleSampling(make_schedule("cosine", 50), "eps")
    feed = parity_inputs(config, rs, batch, height, width, seed=0)

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(to_onnx(step, config, batch, height, width), options,
                                   providers=["CPUExecutionProvider"])
    torch.set_num_threads(threads)
    t_torch = median_seconds(lambda: torch_step(step, feed), repeats)
    t_ort = median_seconds(lambda: session.run(["x_next"], feed), repeats)
    error = float(np.abs(session.run(["x_next"], feed)[0] - torch_step(step, feed)).max())
    return {"name": name, "torch_ms": t_torch * 1e3, "ort_ms": t_ort * 1e3,
            "ratio": t_torch / t_ort, "max_abs_error": error}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="threads for both runtimes (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per runtime (default 5)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", default="256x144", help="WxH (default 256x144, the paper's)")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    import onnxruntime
    import torch

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, CPU, "
          f"{args.threads} thread(s), batch {args.batch}, {width}x{height}, "
          f"median of {args.repeats} steps")
    print(f"{'network':<28} {'torch ms/step':>14} {'ORT ms/step':>12} {'torch/ORT':>10} "
          f"{'max|diff|':>10}")
    for name, channels, blocks in (("tiny (2 blocks, 8 ch)", 8, 2),
                                   ("paper (16 blocks, 64 ch)", 64, 16)):
        r = bench_network(name, channels, blocks, args.batch, height, width, args.threads,
                          args.repeats)
        print(f"{r['name']:<28} {r['torch_ms']:>14.2f} {r['ort_ms']:>12.2f} {r['ratio']:>9.2f}x "
              f"{r['max_abs_error']:>10.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
