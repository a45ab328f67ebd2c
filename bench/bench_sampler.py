"""The paper's sampler against few-step ones, side by side: speed through the server and quality.

    nice .venv/bin/python -m bench.bench_sampler out/models/tornado out/models/ants ... \
        [--settings "torch:ddpm:0:3,onnx:ddim:10:0,onnx:ddim:5:0"] [--frames 8] [--extrapolate 100]

Run it on bundles `trainer train` wrote (their manifests record the held-out frames). For every
bundle and every sampler setting RUNTIME:METHOD:STEPS:T_CORR[:MARGIN] (the first is the reference,
the official sampler: PyTorch eager, DDPM over all 50 steps, 3 Projector correction steps, and
`torch:ddpm:0:3:0` without the bundle's Predictor margin, as the paper; MARGIN serves a copy of the
bundle with that `predictor_margin`, left out the bundle's own), one run measures:

- speed: frames/s of Extrapolate through the real gRPC server (loopback, in this process) for 1 stream
  and for 4 concurrent streams, best of --repeats; the server's runtime is the setting's (torch-cpu:
  the PyTorch modules; onnxruntime-cpu: the bundle exported to ONNX at batch sizes 1, 2 and 4, in a
  temporary copy). Threads: what the runtime takes by default, one per core.
- next-frame PSNR on the trainer's held-out pairs (frames the model never saw), against copying the
  frame, mean MSE over --seeds seeds per pair, through the same runtime and the core's loop;
- the NNFDIST of a --extrapolate-frame extrapolation from the clip's frame 0 (PatchMatch against the
  whole clip; lower = closer to the clip's patches), mean over the frames (the criterion), the mean
  over its last quarter ("late") and the late/early ratio of sinfusion-quality stability; with
  --figures, a contact sheet of 8 of its frames.

Each row's "speed-up" is its frames/s over the reference's at the same stream count, from this run;
"meets" says whether it reaches --target x the reference with PSNR no more than 0.2 dB below it and
NNFDIST no higher. A summary at the end names the fastest setting that meets the goal on every bundle.
--json writes everything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RUNTIMES = {"torch": "torch-cpu", "onnx": "onnxruntime-cpu"}
DEFAULT_SETTINGS = "torch:ddpm:0:3,onnx:ddpm:0:3,onnx:ddim:10:0,onnx:ddim:5:0,onnx:ddim:3:0,onnx:ddim:5:1"
PSNR_TOLERANCE_DB = 0.2


@dataclass(frozen=True)
class Setting:
    runtime: str  # "torch" or "onnx"
    method: str
    steps: int  # 0 = all T
    correction: int
    margin: int | None = None  # the Predictor's margin in px; None = the bundle's

    @classmethod
    def parse(cls, text: str) -> Setting:
        try:
            runtime, method, steps, correction, *margin = text.split(":")
            if len(margin) > 1:
                raise ValueError
            setting = cls(runtime, method, int(steps), int(correction),
                          int(margin[0]) if margin else None)
        except ValueError:
            raise SystemExit(f"bench_sampler: setting {text!r} is not "
                             f"RUNTIME:METHOD:STEPS:T_CORR[:MARGIN]")
        if runtime not in RUNTIMES or method not in ("ddpm", "ddim"):
            raise SystemExit(f"bench_sampler: setting {text!r}: runtime torch|onnx, method ddpm|ddim")
        return setting

    def label(self, schedule_steps: int) -> str:
        margin = "" if self.margin is None else f" m{self.margin}"
        return f"{self.runtime} {self.method} {self.steps or schedule_steps}+{self.correction}{margin}"

    def options(self):
        from sinfusion.sampling import SamplingOptions

        return SamplingOptions(self.steps, self.method, self.correction)

    def params(self, seed: int):
        from sinfusion.v1 import sinfusion_pb2 as pb

        method = pb.SAMPLING_METHOD_DDIM if self.method == "ddim" else pb.SAMPLING_METHOD_DDPM
        return pb.SamplingParams(steps=self.steps, method=method, correction_steps=self.correction,
                                 seed=seed)


def prepared_copy(bundle_path: Path, tmp: Path, margin: int | None = None) -> Path:
    """The bundle copied into `tmp/models/NAME` with ONNX engines at batch 1, 2 and 4 added, and
    serving with Predictor margin `margin` (None: the bundle's)."""
    from sinfusion.bundle import Bundle
    from sinfusion.export.pipeline import ExportOptions, export_bundle

    folder = tmp / "models" / bundle_path.name
    shutil.copytree(bundle_path, folder, ignore=shutil.ignore_patterns("training", "previews", "engines"))
    bundle = Bundle.open(folder)
    bundle.manifest.engines = []  # the source's engines are not copied: list only this copy's
    if margin is not None:
        bundle.manifest.predictor_margin = margin
    bundle.save_manifest()
    roles = tuple(r for r in ("predictor", "projector") if r in bundle.roles)
    export_bundle(bundle, ExportOptions(kinds=("onnx",), roles=roles, batches=(1, 2, 4)))
    return folder


def denoiser_for(setting: Setting, bundle):
    roles = [r for r in ("predictor", "projector") if r in bundle.roles]
    if setting.runtime == "torch":
        from sinfusion.runtimes.torch_runtime import TorchDenoiser

        return TorchDenoiser(bundle, roles=roles)
    from sinfusion.runtimes.onnx_runtime import OnnxDenoiser

    return OnnxDenoiser(bundle, roles=roles)


# --- speed: the server --------------------------------------------------------------------------------

async def _speed(folder: Path, model: str, setting: Setting, frames: int, repeats: int) -> dict[int, float]:
    """Best frames/s of Extrapolate for 1 and 4 concurrent streams, served with the setting's runtime."""
    import grpc

    from sinfusion.server import ServerConfig, serve
    from sinfusion.v1 import sinfusion_pb2_grpc as pb_grpc

    from .bench_server import one_stream  # (first-frame latency, frames) of one Extrapolate

    config = ServerConfig(models=folder.parent, runtime=RUNTIMES[setting.runtime], max_streams=8,
                          max_batch=4, grace=1.0, strict=True)
    result = {}
    async with serve(config) as running:
        async with grpc.aio.insecure_channel(running.target) as channel:
            stub = pb_grpc.SinFusionStub(channel)
            await one_stream(stub, model, 1, setting.params(0))  # warm-up
            for streams in (1, 4):
                best = 0.0
                for _ in range(repeats):
                    start = time.perf_counter()
                    done = await asyncio.gather(*(one_stream(stub, model, frames, setting.params(s + 1))
                                                  for s in range(streams)))
                    best = max(best, sum(count for _, count in done) / (time.perf_counter() - start))
                result[streams] = best
    return result


# --- quality: held-out pairs and a long extrapolation ---------------------------------------------------

def heldout_pairs(bundle) -> list[tuple[int, int]]:
    from sinfusion.nextframe import holdout_pairs

    record = bundle.manifest.quality or {}
    if "holdout_frames" not in record:
        raise SystemExit(f"bench_sampler: {bundle.path} records no held-out frames; train it with "
                         "`trainer train` (default --holdout)")
    first, end = record["holdout_frames"]  # [first, end): the clip's tail
    return holdout_pairs(end, end - first)


def next_frame(bundle, denoiser, setting: Setting, seeds: int) -> dict:
    """Mean over `seeds` seeds of the held-out pairs' MSE, as PSNR, against copy."""
    from sinfusion.nextframe import mse_to_psnr, predict_pairs, score_pairs

    frames, pairs = bundle.frames(), heldout_pairs(bundle)
    scores = [score_pairs(frames, pairs, predict_pairs(denoiser, bundle.sampling(), frames, pairs, 1,
                                                       setting.options(), seed=seed))
              for seed in range(seeds)]
    model_mse = float(np.mean([s["model_mse"] for s in scores]))
    return {"pairs": len(pairs), "model_psnr": mse_to_psnr(model_mse),
            "copy_psnr": scores[0]["copy_psnr"],
            "pairs_won": float(np.mean([s["model_wins"] for s in scores]))}


def extrapolation(bundle, denoiser, setting: Setting, frames: int, sheet: Path | None) -> dict:
    from sinfusion.quality.nnf import PatchMatchOptions, nearest_neighbour_field
    from sinfusion.quality.stability import colour_stats, extrapolate_clip, stability_checks, write_sheet

    clip = extrapolate_clip(bundle, 0, frames, 1, setting.options(), seed=0, denoiser=denoiser)
    if sheet is not None:
        write_sheet(sheet, [clip], 8, 8)
    result = nearest_neighbour_field(clip, bundle.frames(), PatchMatchOptions())
    per_frame = result.per_frame_distance().tolist()
    checks = stability_checks(per_frame, {"original": colour_stats(bundle.frames()),
                                          "extrapolated": colour_stats(clip)})
    return {"nnfdist": float(np.mean(per_frame)), "late_nnfdist": checks["late_nnfdist"],
            "ratio": checks["ratio"]}


# --- the run ---------------------------------------------------------------------------------------------

def sheet_path(args, path: Path, label: str) -> Path | None:
    if args.figures is None:
        return None
    args.figures.mkdir(parents=True, exist_ok=True)
    return args.figures / f"{path.name}-{label.replace(' ', '-').replace('+', '-corr')}.png"


def bench_bundle(path: Path, settings: list[Setting], args) -> list[dict]:
    from sinfusion.bundle import Bundle

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        copies = {}  # one served copy per margin the settings ask for
        for setting in settings:
            if setting.margin not in copies:
                copies[setting.margin] = Bundle.open(prepared_copy(
                    path, Path(tmp) / f"m{setting.margin}", setting.margin))
            bundle = copies[setting.margin]
            folder = bundle.path
            schedule_steps = bundle.role("predictor").schedule["steps"]
            label = setting.label(schedule_steps)
            print(f"  {path.name}: {label} ...", flush=True)
            started = time.monotonic()
            speed = asyncio.run(_speed(folder, bundle.manifest.name, setting, args.frames, args.repeats))
            denoiser = denoiser_for(setting, bundle)
            row = {"bundle": path.name, "setting": label, "fps_1": speed[1], "fps_4": speed[4],
                   **next_frame(bundle, denoiser, setting, args.seeds),
                   **extrapolation(bundle, denoiser, setting, args.extrapolate,
                                   sheet_path(args, path, label)),
                   "seconds": time.monotonic() - started}
            rows.append(row)
    reference = rows[0]
    for row in rows:
        row["speedup_1"] = row["fps_1"] / reference["fps_1"]
        row["speedup_4"] = row["fps_4"] / reference["fps_4"]
        row["d_psnr"] = row["model_psnr"] - reference["model_psnr"]
        row["d_nnfdist"] = row["nnfdist"] / reference["nnfdist"]
        fast = min(row["speedup_1"], row["speedup_4"]) >= args.target
        as_good = row["d_psnr"] >= -PSNR_TOLERANCE_DB and row["nnfdist"] <= reference["nnfdist"]
        row["meets"] = bool(fast and as_good)
    return rows


def print_rows(rows: list[dict]) -> None:
    head = (f"{'bundle':<10} {'setting':<18} {'fps 1':>7} {'fps 4':>7} {'x 1':>6} {'x 4':>6} "
            f"{'PSNR':>6} {'dPSNR':>6} {'copy':>6} {'won':>7} {'NNFDIST':>9} {'/ref':>5} {'late':>9} "
            f"{'ratio':>6} meets")
    print(head)
    for r in rows:
        print(f"{r['bundle']:<10} {r['setting']:<18} {r['fps_1']:>7.2f} {r['fps_4']:>7.2f} "
              f"{r['speedup_1']:>5.1f}x {r['speedup_4']:>5.1f}x {r['model_psnr']:>6.2f} {r['d_psnr']:>+6.2f} "
              f"{r['copy_psnr']:>6.2f} {r['pairs_won']:>3.1f}/{r['pairs']:<3} {r['nnfdist']:>9.2e} "
              f"{r['d_nnfdist']:>5.2f} {r['late_nnfdist']:>9.2e} {r['ratio']:>6.2f} "
              f"{'yes' if r['meets'] else 'no'}")


def summary(rows: list[dict], target: float) -> str:
    settings = dict.fromkeys(r["setting"] for r in rows)
    bundles = dict.fromkeys(r["bundle"] for r in rows)
    winners = [s for s in settings if all(r["meets"] for r in rows if r["setting"] == s)]
    if not winners:
        return f"no setting reaches {target:g}x at equal quality on all {len(bundles)} bundles"
    speed = {s: min(min(r["speedup_1"], r["speedup_4"]) for r in rows if r["setting"] == s) for s in winners}
    best = max(winners, key=speed.get)
    others = ", ".join(w for w in winners if w != best) or "none"
    return (f"fastest setting meeting {target:g}x at equal quality on all {len(bundles)} bundles: {best} "
            f"(at least {speed[best]:.1f}x); also meeting: {others}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="+", type=Path, help="bundle folders written by `trainer train`")
    p.add_argument("--settings", default=DEFAULT_SETTINGS,
                   help="RUNTIME:METHOD:STEPS:T_CORR[:MARGIN],... the first is the reference (default: %(default)s)")
    p.add_argument("--frames", type=int, default=8, help="frames per stream in the speed runs")
    p.add_argument("--repeats", type=int, default=2, help="speed runs per stream count; the best is kept")
    p.add_argument("--seeds", type=int, default=3, help="seeds per held-out pair")
    p.add_argument("--extrapolate", type=int, default=100, help="frames of the NNFDIST extrapolation")
    p.add_argument("--target", type=float, default=10.0, help="speed-up goal over the reference")
    p.add_argument("--json", type=Path, help="write every row here")
    p.add_argument("--figures", type=Path, help="folder for a contact sheet of each extrapolation")
    args = p.parse_args()
    logging.getLogger("sinfusion.server").setLevel(logging.WARNING)
    settings = [Setting.parse(s) for s in args.settings.split(",")]
    print(f"bench_sampler: {len(settings)} settings on {len(args.bundles)} bundles, {os.cpu_count()} cores; "
          f"reference {args.settings.split(',')[0]}", flush=True)
    rows = []
    for path in args.bundles:
        rows += bench_bundle(path, settings, args)
        print_rows([r for r in rows if r["bundle"] == path.name])
    print()
    print_rows(rows)
    print(summary(rows, args.target))
    if args.json:
        args.json.write_text(json.dumps({"settings": args.settings, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
