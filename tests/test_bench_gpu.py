"""bench/bench_gpu.py --dry: every code path of the GPU benchmark (compiled runtime, device-resident
loop, scheduler, trainer's compiled step) runs on the CPU at tiny sizes and prints every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_dry_runs_every_section(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--dry", "--json",
                           str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert "skipped" not in figures and "verdicts" not in figures  # --dry judges nothing
    assert figures["device"] == "CPU (--dry)"
    for key in ("eager_fp32_step_ms_batch1", "compiled_step_ms_batch2", "warm_up_s",
                "step_max_abs_vs_eager_fp32", "frame1_mean_abs_vs_eager_fp32",
                "one_stream_ddim10+3_fps", "first_frame_ms", "one_stream_ddpm50+3_fps",
                "2_streams_ddim10+3_fps_total", "train_eager_steps_per_s_batch1",
                "train_compiled_steps_per_s_batch1", "train_compiled_crops_per_s_batch4"):
        assert isinstance(figures[key], float), key
        assert figures[key] >= 0 if key.startswith(("step_", "frame1")) else figures[key] > 0, key
    assert figures["frame1_mean_abs_vs_eager_fp32"] < 1e-3  # fp32 compiled on the CPU: same frames
    assert json.loads(figures["runtime"])["compiled"] in (True, False)
    assert "not judged (--dry)" in proc.stdout


def test_bench_gpu_refuses_without_a_gpu_unless_dry():
    import torch

    if torch.cuda.is_available():
        return
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py")], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "use --dry" in proc.stderr
