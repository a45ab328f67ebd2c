"""Time to beat "copy the frame": next-frame PSNR on unseen frames while the Predictor trains.

    nice .venv/bin/python -m bench.bench_recipe [--clips tornado,ants,boat_race,fish] [--minutes 10]
        [--preset cpu] [--set field=value ...] [--threads 2] [--device cpu] [--eval-every 60]
        [--out results.json] [--plot curves.png] [--data DIR]

For each clip: the `sinfusion-quality nextframe` protocol (train the Predictor on frames 0-15, n=16,
k=1, on nothing else; test every pair of unseen frames, at most 100), with the preset's sizes. While
it trains, every --eval-every seconds the EMA Predictor is scored on 16 evenly spaced test pairs with
a cheap sampler (DDIM 10 steps, no correction); the first time it beats copy by 0.5 dB on most of
them is the clip's time to beat copy. At the end every test pair is scored with the paper's DDPM 50
steps and with DDIM 10. Clips are read from --data (default ../shared/data; tornado is a folder of
PNGs, the others mp4). Prints one table; --out also writes every measurement as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLIPS = {"tornado": "tornado", "ants": "clips/ants.mp4", "boat_race": "clips/boat_race.mp4",
         "fish": "clips/fish.mp4"}
CHEAP = dict(steps=10, method="ddim", correction_steps=0)


def parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def run_clip(name: str, config, work: Path, eval_every: float, device: str = "cpu",
             data: Path = DATA) -> dict:
    import numpy as np

    from sinfusion.quality.nextframe import evaluate, make_split
    from sinfusion.runtimes.torch_runtime import TorchDenoiser
    from sinfusion.sampling import SamplingOptions
    from sinfusion.trainer.monitor import NextFrameMonitor, verdict
    from sinfusion.trainer.training import train_bundle
    from sinfusion.video import read_clip

    frames = read_clip(data / CLIPS[name], max_side=config.max_side).frames
    split = make_split(len(frames), 16, 1, 1, 0, 100)
    chosen = np.linspace(0, len(split.pairs) - 1, min(16, len(split.pairs))).round().astype(int)
    monitor = NextFrameMonitor(frames, [split.pairs[c] for c in chosen],
                               options=SamplingOptions(**CHEAP), eval_every_s=eval_every,
                               stop_margin_db=0.0, keep_best=False)  # test pairs: watch only
    started = time.monotonic()
    bundle = train_bundle(frames[split.train], work / name, config, roles=["predictor"],
                          overwrite=True, progress=False, device=device, monitor=monitor)
    train_s = time.monotonic() - started
    beat = next((m for m in monitor.history if verdict(m) == "beats copy"), None)
    denoiser = TorchDenoiser(bundle, device=device, roles=["predictor"])
    final = {}
    for label, options in (("ddpm50", SamplingOptions(correction_steps=0)),
                           ("ddim10", SamplingOptions(**CHEAP))):
        r = evaluate(denoiser, bundle.sampling(), frames, split, options, seed=0)
        final[label] = {k: r[k] for k in ("model_psnr", "copy_psnr", "model_wins")}
    return {"clip": name, "size": f"{frames.shape[2]}x{frames.shape[1]}", "pairs": len(split.pairs),
            "steps": bundle.role("predictor").trained_steps, "train_s": round(train_s, 1),
            "time_to_beat_s": None if beat is None else beat.seconds,
            "curve": [vars(m) for m in monitor.history], "final": final}


def device_name(device: str) -> str:
    """What ran it, for the record: the GPU's name, or the CPU count."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", default=",".join(CLIPS))
    parser.add_argument("--minutes", type=float, default=10.0, help="Predictor training per clip")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a TrainConfig field (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (training and scoring)")
    parser.add_argument("--eval-every", type=float, default=60.0, help="seconds between scores")
    parser.add_argument("--work", default="out/bench_recipe")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="folder holding tornado/ and clips/ (default: ../shared/data)")
    parser.add_argument("--out", help="JSON file for every measurement")
    parser.add_argument("--plot", help="PNG of the curves (quality.plots.plot_time_to_beat)")
    args = parser.parse_args(argv)

    import torch

    from sinfusion.trainer.presets import get_preset

    torch.set_num_threads(args.threads)
    overrides = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.set)}
    # The Predictor alone gets the whole budget; steps only cap it when --set predictor_steps=N.
    config = get_preset(args.preset, **{"predictor_steps": 10**7, **overrides,
                                        "time_budget_s": args.minutes * 60, "holdout": 0,
                                        "checkpoint_every": 0, "preview_every": 0})
    rows = []
    for name in args.clips.split(","):
        if not (args.data / CLIPS[name]).exists():
            print(f"skip {name}: {args.data / CLIPS[name]} not found", file=sys.stderr)
            continue
        row = run_clip(name, config, Path(args.work), args.eval_every, args.device, args.data)
        row["device"] = device_name(args.device)
        rows.append(row)
        d, q = row["final"]["ddpm50"], row["final"]["ddim10"]
        print(f"{name:>10} {row['size']:>7} {row['steps']:>6} steps {row['train_s']:>6.0f} s | "
              f"beat copy at {row['time_to_beat_s'] or '-':>6} s | copy {d['copy_psnr']:.2f} | "
              f"DDPM50 {d['model_psnr']:.2f} ({d['model_wins']}/{row['pairs']}) | "
              f"DDIM10 {q['model_psnr']:.2f} ({q['model_wins']}/{row['pairs']})", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"config": config.to_dict(), "argv": sys.argv[1:],
                                              "threads": args.threads, "cpus": os.cpu_count(),
                                              "rows": rows}, indent=1))
    if args.plot and rows:
        from sinfusion.quality.plots import plot_time_to_beat

        plot_time_to_beat(rows, args.plot, title=f"preset {args.preset}, {args.threads} threads")
    print(f"command: python -m bench.bench_recipe {' '.join(sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
