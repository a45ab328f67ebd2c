"""The whole product end to end on one machine, through its real command-line tools.

    ./dev demo [--out demo-out] [--quick]

1. make a sample clip (sinfusion.synthetic: drifting clouds, waves, moving blobs), written as mp4;
2. `trainer train` it with the CPU recipe on a 2-minute budget (Projector, Predictor, Interpolator)
   into a bundle; the trainer measures next-frame prediction against copying the frame on held-out
   frames and says whether the model beats it;
3. `sinfusion-export` the bundle to fixed-shape ONNX engines;
4. start `sinfusion-server` on a free loopback port with ONNX Runtime on the CPU;
5. `sinfusion extrapolate` N future frames and `sinfusion upsample` the clip's head 4x over gRPC,
   written as mp4, plus a PNG contact sheet of both;
6. stop the server (SIGTERM, graceful drain) and print where the outputs are.

Each step runs the installed CLI in a subprocess, exactly as a user would; their progress bars show.
`--quick` trains a few steps only: tests/test_demo.py runs it so the demo cannot silently rot.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sinfusion.bundle import Bundle
from sinfusion.nextframe import summary_line
from sinfusion.server.process import ServerStartError, start_server_process, stop_server_process
from sinfusion.synthetic import write_sample_clip
from sinfusion.video import VideoError, contact_sheet, read_clip, write_image, write_video

BIN = Path(sys.executable).parent
MODEL = "sample"
TRAIN_TIME = "3m"  # the demo's training budget; `trainer train` alone defaults to 15 minutes
# Frames per stream of the trainer's layout check (it defaults to 300): four streams of 300 frames
# would take the demo past 5 minutes (349 s); 100 keep it near 4.
CHECK_FRAMES = "100"


class DemoError(RuntimeError):
    pass


def step(title: str) -> None:
    print(f"\n== {title}", file=sys.stderr, flush=True)


def run(*args: str | os.PathLike) -> None:
    cmd = [str(BIN / str(args[0])), *map(str, args[1:])]
    print("$ " + " ".join(Path(cmd[0]).name if i == 0 else c for i, c in enumerate(cmd)),
          file=sys.stderr, flush=True)
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise DemoError(f"{Path(cmd[0]).name} exited with status {result.returncode}")


def start_server(models: Path, out: Path) -> tuple[subprocess.Popen, int]:
    log = out / "server.log"
    args = ["--models", models, "--host", "127.0.0.1", "--port", "0", "--runtime", "onnxruntime-cpu"]
    print("$ sinfusion-server " + " ".join(map(str, args)) + f"  (log: {log})", file=sys.stderr,
          flush=True)
    with open(log, "w") as sink:
        try:
            return start_server_process(args, out / "server.port", stdout=sink,
                                        stderr=subprocess.STDOUT)
        except ServerStartError as exc:
            raise DemoError(f"{exc}; see {log}") from None


def sheet_rows(rows: list[np.ndarray], columns: int) -> np.ndarray:
    """One contact-sheet row per video, padded to a common width."""
    sheets = [contact_sheet(frames[:columns], columns=columns) for frames in rows]
    width = max(s.shape[1] for s in sheets)
    padded = [np.pad(s, ((0, 4), (0, width - s.shape[1]), (0, 0)), constant_values=255)
              for s in sheets]
    return np.concatenate(padded)[:-4]


def demo(out: Path, quick: bool, frames: int, seed: int) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    models = out / "models"
    bundle = models / MODEL

    step("1/6 sample clip")
    clip_path = write_sample_clip(out / "sample.mp4")
    head_path = out / "sample_head.mp4"
    clip = read_clip(clip_path, max_side=0)

    write_video(head_path, clip.frames[:6 if quick else 12], clip.fps)
    print(f"{clip_path}: {len(clip.frames)} frames {clip.width}x{clip.height} @ {clip.fps:g} fps",
          file=sys.stderr)

    step(f"2/6 train the cpu recipe for {TRAIN_TIME} (Projector, Predictor, Interpolator)")
    train = ["trainer", "train", clip_path, "--out", bundle, "--preset", "cpu", "--time", TRAIN_TIME,
             "--eval-every", "20", "--check-frames", CHECK_FRAMES, "--name", MODEL, "--seed", seed,
             "--overwrite"]
    if quick:
        train += ["--steps", "20"]
    run(*train)

    step("3/6 export ONNX engines")
    run("sinfusion-export", bundle, "--kind", "onnx")

    step("4/6 start the gRPC server (ONNX Runtime, CPU)")
    server, port = start_server(models, out)
    outputs = {}
    try:
        address = f"127.0.0.1:{port}"
        step(f"5/6 stream over gRPC from {address}")
        run("sinfusion", "--address", address, "models")
        sampling = ["--seed", seed]  # the server's default sampler (DDIM, 3 steps, the correction)
        outputs["extrapolated"] = out / "extrapolated.mp4"
        run("sinfusion", "--address", address, "extrapolate", "--model", MODEL,
            "--frames", frames, "--start-frame", len(clip.frames) - 1, *sampling,
            "-o", outputs["extrapolated"])
        outputs["upsampled"] = out / "upsampled_x4.mp4"
        run("sinfusion", "--address", address, "upsample", "--model", MODEL, "--factor", 4,
            *sampling, "-i", head_path, "-o", outputs["upsampled"])
    finally:
        step("6/6 stop the server")
        status = stop_server_process(server)
        print(f"server exited with status {status}", file=sys.stderr)

    extrapolated = read_clip(outputs["extrapolated"], max_side=0).frames
    spread = np.linspace(0, len(extrapolated) - 1, min(8, len(extrapolated))).round().astype(int)
    rows = [clip.frames[-8:], extrapolated[spread],  # 8 of the N frames, the last one included
            read_clip(outputs["upsampled"], max_side=0).frames]
    outputs["contact sheet"] = write_image(out / "contact_sheet.png", sheet_rows(rows, 8))
    outputs["bundle"] = bundle
    outputs["server log"] = out / "server.log"
    quality = Bundle.open(bundle).manifest.quality
    print(f"\nthe model, measured by the trainer: {summary_line(quality)}", file=sys.stderr)
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./dev demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder")
    parser.add_argument("--frames", type=int, default=24, help="future frames to stream")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="train 20 steps per role (a smoke run)")
    parser.add_argument("--clean", action="store_true", help="delete --out first")
    args = parser.parse_args(argv)
    if args.clean and args.out.exists():
        shutil.rmtree(args.out)
    started = time.monotonic()
    try:
        outputs = demo(args.out, args.quick, args.frames, args.seed)
    except (DemoError, VideoError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s. Outputs:")
    for what, path in outputs.items():
        print(f"  {what:14s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
