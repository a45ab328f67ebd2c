"""The `trainer` CLI: a real train -> sample round trip, Ctrl-C, and every bad input's one-line error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sinfusion.bundle import Bundle
from sinfusion.io.files import write_image, write_video
from sinfusion.trainer.cli import main
from sinfusion.video import read_clip
from tests.conftest import make_tiny_bundle, tiny_clip

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--channels", "8", "--blocks", "2", "--batch-size", "1", "--quiet"]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def clip_mp4(tmp_path) -> Path:
    return write_video(tmp_path / "clip.mp4", tiny_clip(6, 16, 24), 12.0)


def test_steps_per_role_override_steps_for_all(tmp_path, clip_mp4, capsys):
    out = tmp_path / "bundle"
    code, err = run_cli(capsys, "train", clip_mp4, "--out", out, "--steps", "2", "--projector-steps", "3",
                        "--roles", "predictor,projector", *TINY, "--preview-every", "0")
    assert code == 0, err
    bundle = Bundle.open(out)
    assert [bundle.role(r).trained_steps for r in ("predictor", "projector")] == [2, 3]


def test_check_frames_sets_the_layout_checks_streams():
    """--check-frames shortens the trainer's layout check (the demo's 100); the preset's is 300."""
    from sinfusion.trainer.cli import _train_config, build_parser

    def config(*flags):
        return _train_config(build_parser().parse_args(["train", "c.mp4", "--out", "o", *flags]))

    assert config().layout_check_frames == 300
    assert config("--check-frames", "100").layout_check_frames == 100


def test_train_then_sample_every_mode(tmp_path, clip_mp4, capsys):
    out = tmp_path / "bundle"
    code, err = run_cli(capsys, "train", clip_mp4, "--out", out, "--steps", "2", *TINY,
                        "--preview-every", "0", "--seed", "3")
    assert code == 0, err
    bundle = Bundle.open(out)
    assert bundle.roles == ["predictor", "projector", "interpolator"]
    assert (bundle.manifest.width, bundle.manifest.height, bundle.manifest.fps) == (24, 16, 12.0)
    assert bundle.role("predictor").settings["seed"] == 3

    fast = ["--steps", "2", "--method", "ddim", "--correction-steps", "1"]
    code, err = run_cli(capsys, "sample", out, "--out", tmp_path / "x.mp4", "--extrapolate", "3",
                        "--k", "-1", "--start", "5", "--sheet", tmp_path / "x.png", *fast)
    assert code == 0, err
    assert read_clip(tmp_path / "x.mp4").frames.shape == (4, 16, 24, 3)  # start frame + 3
    assert "(4 frames of 24x16 at 12 fps)" in err
    assert (tmp_path / "x.png").is_file()
    code, err = run_cli(capsys, "sample", out, "--out", tmp_path / "g.mp4", "--generate", "2", *fast)
    assert code == 0, err
    assert read_clip(tmp_path / "g.mp4").frames.shape[0] == 2
    code, err = run_cli(capsys, "sample", out, "--out", tmp_path / "u.mp4", "--upsample", "2", *fast)
    assert code == 0, err
    up = read_clip(tmp_path / "u.mp4")
    assert up.frames.shape[0] == 6 + 5 and up.fps == pytest.approx(24.0)
    code, err = run_cli(capsys, "plot", out, "--out", tmp_path / "loss.png")
    assert code == 0, err
    assert read_clip(tmp_path / "loss.png").frames.shape[0] == 1


def test_train_options_pick_frames_and_size(tmp_path, capsys):
    folder = tmp_path / "frames"
    for i, frame in enumerate(tiny_clip(8, 32, 48)):
        write_image(folder / f"f{i}.png", frame)
    code, err = run_cli(capsys, "train", folder, "--out", tmp_path / "b", "--steps", "1", *TINY,
                        "--roles", "projector,predictor", "--start", "1", "--end", "7", "--stride", "2",
                        "--size", "24x16", "--preview-every", "0")
    assert code == 0, err
    b = Bundle.open(tmp_path / "b")
    assert b.roles == ["predictor", "projector"]
    assert b.frames().shape == (3, 16, 24, 3)  # frames 1, 3, 5 resized to 24x16
    # an existing bundle is neither overwritten nor resumed silently
    code, err = run_cli(capsys, "train", folder, "--out", tmp_path / "b", "--steps", "1", *TINY)
    assert_one_line_error(code, err, "already holds a bundle", "--resume")


def test_single_image_cli(tmp_path, capsys):
    write_image(tmp_path / "one.png", tiny_clip(1, 16, 24)[0])
    code, err = run_cli(capsys, "train", tmp_path / "one.png", "--out", tmp_path / "b", "--steps", "1",
                        *TINY, "--preview-every", "0")
    assert code == 0, err
    assert Bundle.open(tmp_path / "b").roles == ["projector"]
    assert "(projector; one image of 24x16)" in err  # not "1 frames"
    code, err = run_cli(capsys, "sample", tmp_path / "b", "--out", tmp_path / "x.mp4", "--extrapolate", "2")
    assert_one_line_error(code, err, "needs a trained predictor")


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video")
    make_tiny_bundle(tmp_path / "tb", roles=("projector",))
    notabundle = tmp_path / "plain"
    notabundle.mkdir()
    (notabundle / "x.txt").write_text("hi")
    clip = write_video(tmp_path / "c.mp4", tiny_clip(4, 16, 24), 12.0)
    cases = [
        (["train", tmp_path / "missing.mp4", "--out", tmp_path / "o"], ["missing.mp4", "no such file"]),
        (["train", empty, "--out", tmp_path / "o"], ["empty", "holds no frames"]),
        (["train", tmp_path / "junk.mp4", "--out", tmp_path / "o"], ["junk.mp4"]),
        (["train", clip, "--out", tmp_path / "o", "--start", "9"], ["no frames in the selected range"]),
        (["train", clip, "--out", tmp_path / "o", "--start", "3", "--end", "2"], ["--end"]),
        (["train", clip, "--out", tmp_path / "o", "--stride", "0"], ["--stride", "must be an integer >= 1"]),
        (["train", clip, "--out", tmp_path / "o", "--roles", "predictor,painter"],
         ["painter", "valid roles"]),
        (["train", clip, "--out", tmp_path / "o", "--preset", "huge"], ["--preset", "huge"]),
        (["train", clip, "--out", tmp_path / "o", "--size", "96by64"], ["--size", "WxH"]),
        (["train", clip, "--out", tmp_path / "o", "--size", "4x4"], ["--size", "[8, 4096]"]),
        (["train", clip, "--out", tmp_path / "o", "--blocks", "3"], ["blocks must be an even"]),
        (["train", clip, "--out", tmp_path / "o", "--check-frames", "39"],
         ["--check-frames", "must be an integer >= 40"]),
        (["train", clip, "--out", tmp_path / "o", "--correction-weight", "0"],
         ["--correction-weight", "(0, 1]"]),
        (["train", clip, "--out", tmp_path / "o", "--correction-passes", "9"],
         ["correction_passes must be in [1, 8]"]),
        (["train", clip, "--out", tmp_path / "o", "--predictor-margin", "80"],
         ["predictor_margin must be in [0, 64] px"]),
        (["train", clip, "--out", tmp_path / "o", "--coarse-correction", "60"],
         ["coarse_correction_level must be in [0, 50]"]),
        (["train", clip, "--out", tmp_path / "o", "--coarse-weight", "2"],
         ["--coarse-weight", "(0, 1]"]),
        (["train", clip, "--out", tmp_path / "o", "--layout-pull", "1"],
         ["--layout-pull", "[0, 1)"]),
        (["train", clip, "--out", tmp_path / "o", "--layout-sigma", "-2"],
         ["--layout-sigma"]),
        (["train", clip, "--out", tmp_path / "o", "--layout-pull", "0.1", "--layout-sigma", "99"],
         ["layout_sigma must be in (0, 64] px"]),
        (["train", clip, "--out", tmp_path / "o", "--resume"], ["nothing to resume"]),
        (["train", clip, "--out", tmp_path / "o", "--device", "abacus"], ["unknown device"]),
        (["train", clip, "--out", notabundle], ["not a bundle"]),
        (["train", clip], ["--out"]),
        (["sample", notabundle, "--out", tmp_path / "x.mp4", "--generate", "2"], ["not a bundle"]),
        (["sample", tmp_path / "nope", "--out", tmp_path / "x.mp4", "--generate", "2"], ["no such"]),
        (["sample", tmp_path / "tb", "--out", tmp_path / "x.mp4", "--generate", "2"],
         ["needs a trained predictor"]),
        (["sample", tmp_path / "tb", "--out", tmp_path / "x.txt", "--generate", "2"], ["--out"]),
        (["sample", tmp_path / "tb", "--out", tmp_path / "x.mp4"], ["one of the arguments"]),
        (["sample", tmp_path / "tb", "--out", tmp_path / "x.mp4", "--upsample", "3"], ["--upsample"]),
        (["sample", tmp_path / "tb", "--out", tmp_path / "x.mp4", "--generate", "1", "--device", "tpu"],
         ["needs a trained predictor"]),  # the bundle is checked first
        (["frobnicate"], ["invalid choice"]),
    ]
    for argv, needles in cases:
        code, err = run_cli(capsys, *argv)
        assert_one_line_error(code, err, *needles)
    make_tiny_bundle(tmp_path / "full")
    for extra, needle in ((["--k", "5"], "k must be a nonzero integer in [-3, 3]"),
                          (["--start", "99"], "start must be in [0, 7]"),
                          (["--steps", "80"], "steps must be in [0, 50]")):
        code, err = run_cli(capsys, "sample", tmp_path / "full", "--out", tmp_path / "x.mp4",
                            "--extrapolate", "2", *extra)
        assert_one_line_error(code, err, needle)
        assert code == 2
    code, err = run_cli(capsys, "sample", tmp_path / "full", "--out", tmp_path / "x.mp4",
                        "--extrapolate", "1", "--device", "abacus")
    assert_one_line_error(code, err, "unknown device 'abacus'")


def test_console_script_reports_without_traceback(tmp_path):
    """The installed entry point, as a user runs it: exit code and one line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "sinfusion.trainer.cli", "train", str(tmp_path / "nope.mp4"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines() == [f"trainer: {tmp_path / 'nope.mp4'}: no such file or folder"]


def test_ctrl_c_checkpoints_and_exits_130(tmp_path):
    """A real SIGINT to a training process: it finishes the step, saves, says how to resume, exits 130."""
    clip = write_video(tmp_path / "c.mp4", tiny_clip(4, 16, 24), 12.0)
    out = tmp_path / "b"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sinfusion.trainer.cli", "train", str(clip), "--out", str(out), "--steps", "100000",
         "--roles", "projector", "--checkpoint-every", "5", "--preview-every", "0", *TINY],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not (out / "training" / "projector.json").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].startswith("trainer: interrupted projector at step ")
    assert "--resume" in err and "Traceback" not in err
    state = Bundle.open(out).role("projector")
    assert 5 <= state.trained_steps < 100000
    # the message's command resumes it (here: with fewer steps so that it ends at once)
    code = main(["train", str(clip), "--out", str(out), "--resume", "--steps",
                 str(state.trained_steps + 1), "--quiet"])
    assert code == 0
    resumed = Bundle.open(out)
    assert resumed.role("projector").trained_steps == state.trained_steps + 1
    assert resumed.roles == ["projector"]  # the interrupted run's roles, not every role
    np.testing.assert_array_equal(Bundle.open(out).frames().shape, (4, 16, 24, 3))


def test_sample_with_the_onnx_runtime_matches_torch(tmp_path, capsys):
    """`--runtime onnx` runs the same loop over exported engines: same seed, (nearly) same frames."""
    from sinfusion.export import ExportOptions, export_bundle

    bundle = make_tiny_bundle(tmp_path / "b", roles=("predictor", "projector"))
    argv = ["sample", tmp_path / "b", "--extrapolate", "2", "--steps", "3", "--method", "ddim",
            "--seed", "5"]
    code, err = run_cli(capsys, *argv, "--out", tmp_path / "o.mp4", "--runtime", "onnx")
    assert_one_line_error(code, err, "no onnx engines", "sinfusion-export")
    export_bundle(bundle, ExportOptions(batches=(1,)))
    for runtime in ("onnx", "torch"):
        code, err = run_cli(capsys, *argv, "--out", tmp_path / f"{runtime}.mp4", "--runtime", runtime,
                            "--sheet", tmp_path / f"{runtime}.png")
        assert code == 0, err
    onnx, torch_ = (read_clip(tmp_path / f"{r}.png").frames for r in ("onnx", "torch"))
    assert np.abs(onnx.astype(int) - torch_.astype(int)).max() <= 2
