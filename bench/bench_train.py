"""Training speed: optimisation steps/s of the tiny and paper networks, with the real training step.

    nice .venv/bin/python -m bench.bench_train [--networks tiny,paper] [--roles predictor]
        [--device cpu|cuda] [--threads 1] [--steps 20] [--paper-steps 3] [--size 96x64]
        [--layouts channels-last,nchw]

Each row runs trainer.loop.train_step (crop sampling on the device, noising, forward, loss, backward,
Adam, EMA) on a synthetic clip: the tiny preset's network on the sample clip (96x64 unless --size,
crops 91x61, batch 2; the cpu preset trains 16:9 clips at 128x72) and the paper's network (16 blocks
x 64 channels) on a 256x144 clip (crops 243x137, batch 1, as paper appendix D), in each memory
layout of --layouts (channels-last is the trainer's default on every device). It prints wall-clock steps/s and, because this machine is shared, also steps
per CPU-second of this process (with one thread, what an idle core would do) and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from sinfusion.io.cli import size


def bench(name: str, role: str, device: str, steps: int, tiny_size: tuple[int, int] = (96, 64),
          channels_last: bool = True) -> dict:
    import torch

    from sinfusion.schedule import make_schedule
    from sinfusion.synthetic import make_sample_clip
    from sinfusion.trainer.loop import build_run, train_step
    from sinfusion.trainer.presets import get_preset
    from sinfusion.trainer.crops import ClipCrops

    if name == "tiny":
        config, (h, w) = get_preset("tiny"), (tiny_size[1], tiny_size[0])
    else:
        config, (h, w) = get_preset("paper"), (144, 256)
    frames = make_sample_clip(8, h, w)
    dev = torch.device(device)
    run = build_run(role, config, make_schedule("cosine", config.schedule_steps), dev, {},
                    channels_last=channels_last)
    crops = ClipCrops(frames, config.crop_fraction, dev, run.generator)
    tables = tuple(torch.tensor(a, dtype=torch.float32, device=dev)
                   for a in (run.schedule.sqrt_alpha_bars, run.schedule.sqrt_one_minus_alpha_bars))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):  # warm-up: allocator, kernels
        train_step(run, crops, tables)
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        train_step(run, crops, tables)
    sync()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"network": f"{name} ({config.blocks}x{config.channels})", "role": role,
            "layout": "channels-last" if channels_last else "nchw",
            "crop": "x".join(map(str, reversed(crops.crop))), "batch": config.batch_size,
            "steps": steps, "wall": steps / wall, "cpu": steps / cpu}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="tiny,paper")
    parser.add_argument("--roles", default="predictor")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of the tiny network")
    parser.add_argument("--paper-steps", type=int, default=3, help="timed steps of the paper network")
    parser.add_argument("--size", type=size, default=(96, 64), help="WxH of the tiny network's clip")
    parser.add_argument("--layouts", default="channels-last,nchw",
                        help="memory layouts to time, comma-separated: channels-last, nchw")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    print("command: " + " ".join(["python -m bench.bench_train", *(argv or sys.argv[1:])]))
    print(f"device: {args.device}, torch {torch.__version__}, threads {args.threads}, "
          f"cpus {os.cpu_count()}, load average before {os.getloadavg()[0]:.1f}")
    layouts = args.layouts.split(",")
    if unknown := set(layouts) - {"channels-last", "nchw"}:
        parser.error(f"--layouts: unknown {', '.join(sorted(unknown))}; valid: channels-last, nchw")
    print(f"{'network':<16} {'role':<13} {'layout':<13} {'crop':>8} {'batch':>5} {'steps':>5} "
          f"{'steps/s':>8} {'steps/cpu-s':>11}")
    for name in args.networks.split(","):
        for role in args.roles.split(","):
            for layout in layouts:
                r = bench(name, role, args.device, args.steps if name == "tiny" else args.paper_steps,
                          args.size, layout == "channels-last")
                print(f"{r['network']:<16} {r['role']:<13} {r['layout']:<13} {r['crop']:>8} "
                      f"{r['batch']:>5} {r['steps']:>5} {r['wall']:>8.2f} {r['cpu']:>11.2f}", flush=True)
    print(f"load average after {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
