"""Stability / diversity reports on a tiny bundle, the figures, and the `sinfusion-quality` CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sinfusion.io.files import write_image
from sinfusion.quality import cli
from sinfusion.quality.nnf import PatchMatchOptions
from sinfusion.quality.plots import nnf_colour_map, plot_nextframe
from sinfusion.quality.stability import diversity_report, extrapolate_clip, references, stability_report
from sinfusion.sampling import SamplingOptions
from tests.conftest import make_tiny_bundle, tiny_clip

FAST_SAMPLING = SamplingOptions(steps=4, correction_steps=2)
FAST_PM = PatchMatchOptions(iterations=3)
PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


def test_extrapolated_clip_starts_from_the_real_frame(tiny_bundle):
    clip = extrapolate_clip(tiny_bundle, start=2, frames=5, k=1, sampling=FAST_SAMPLING)
    assert clip.shape == (6, 16, 24, 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(clip[0], tiny_bundle.frames()[2])
    with pytest.raises(ValueError, match="start frame"):
        extrapolate_clip(tiny_bundle, start=99, frames=5, k=1, sampling=FAST_SAMPLING)


def test_stability_report_scores_every_frame_and_draws(tiny_bundle, tmp_path):
    report = stability_report(tiny_bundle.path, frames=7, sampling=FAST_SAMPLING,
                              patchmatch=FAST_PM, figures=tmp_path, prefix="t-")
    assert len(report["per_frame_nnfdist"]) == 6  # 8 frames (start + 7) -> 6 patch centres
    assert report["holdout"]["query_frames"] == [4, 7] and report["holdout"]["nnfdist"] > 0
    # Untrained random networks produce frames far from the clip.
    assert min(report["per_frame_nnfdist"]) > 1e-3
    assert len(report["colour"]["extrapolated"]["mean"]) == 8
    assert is_png(tmp_path / "t-stability.png") and is_png(tmp_path / "t-stability-sheet.png")
    checks = report["checks"]
    assert checks["early_frames"] == [1, 1] and checks["late_frames"] == [6, 6]  # a quarter each
    assert checks["ratio"] == pytest.approx(report["per_frame_nnfdist"][-1]
                                            / report["per_frame_nnfdist"][0])
    assert 0.0 <= checks["std"]["inside"] <= 1.0 and len(checks["mean"]["band"]) == 2
    assert checks["motion"]["clip"] > 0 and checks["motion"]["ratio"] >= 0
    generated = stability_report(tiny_bundle.path, frames=7, sampling=FAST_SAMPLING,
                                 patchmatch=FAST_PM, generated=True)
    assert generated["mode"] == "generate" and len(generated["per_frame_nnfdist"]) == 6


def test_stability_checks_flag_drift_and_colour_leaving_its_band():
    from sinfusion.quality.stability import stability_checks

    per_frame = [1.0] * 10 + [1.2] * 140 + [2.0] * 50  # 200 frames, the last 50 at twice the start
    colour = {"original": {"mean": [0.4, 0.5], "std": [0.2, 0.3], "saturation": [0.1, 0.1]},
              "extrapolated": {"mean": [0.45] * 151 + [0.6] * 50, "std": [0.25] * 201,
                               "saturation": [0.1] * 201}}
    checks = stability_checks(per_frame, colour)
    assert checks["early_frames"] == [1, 10] and checks["late_frames"] == [151, 200]
    assert checks["ratio"] == pytest.approx(2.0)
    assert checks["mean"]["inside"] == 0.0 and checks["std"]["inside"] == 1.0
    assert checks["saturation"]["inside"] == 1.0 and checks["mean"]["late_range"] == [0.6, 0.6]
    from sinfusion.quality.stability import checks_line

    assert checks_line(checks) == (
        "drift 2.00 (NNFDIST of frames 151-200 over frames 1-10, over the goal of 1.5); frames "
        "151-200 inside the clip's colour band: brightness 0%, contrast 100%, saturation 100%")
    assert "within the goal" in checks_line(stability_checks([1.0] * 200, colour))
    # a start frame at the band's edge, read back give or take 8-bit rounding, is inside; past it is not
    edge = {"original": colour["original"], "extrapolated": {
        "mean": [0.4 - 2e-5] * 201, "std": [0.3 + 2e-5] * 201, "saturation": [0.1 + 3e-4] * 201}}
    checks = stability_checks(per_frame, edge)
    assert checks["mean"]["inside"] == 1.0 and checks["std"]["inside"] == 1.0
    assert checks["saturation"]["inside"] == 0.0


def test_motion_check_tells_a_frozen_stream_from_one_at_the_clips_pace():
    from sinfusion.quality.stability import checks_line, motion_check, stability_checks

    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (6, 4, 5, 3), dtype=np.uint8)
    frozen = np.repeat(clip[-1:], 20, axis=0)
    assert motion_check(clip, frozen) == {"clip": motion_check(clip, clip)["clip"], "late": 0.0,
                                          "ratio": 0.0}
    assert motion_check(clip, clip)["ratio"] == pytest.approx(1.0)
    assert motion_check(clip, clip[::-1], k=-1)["ratio"] == pytest.approx(1.0)
    # only the late frames count: a stream that moved and then stopped reads as stopped
    moved_then_stopped = np.concatenate([clip, frozen])
    assert motion_check(clip, moved_then_stopped, late=10)["ratio"] == 0.0
    # frames 2 apart (k = 2) change more in the clip: the stream is measured against those
    assert motion_check(clip, clip, k=2)["clip"] != motion_check(clip, clip)["clip"]
    stats = ("mean", "std", "saturation")
    checks = stability_checks([1.0] * 20, {"original": {s: [0.5] for s in stats},
                                           "extrapolated": {s: [0.5] * 21 for s in stats}})
    checks["motion"] = motion_check(clip, moved_then_stopped, late=5)
    assert checks_line(checks).endswith("; they change 0% as much per frame as the clip")


def test_diversity_report_orders_the_references(tiny_bundle, tmp_path):
    report = diversity_report(tiny_bundle.path, clips=2, frames=5, sampling=FAST_SAMPLING,
                              patchmatch=FAST_PM, figures=tmp_path)
    scores = report["scores"]
    assert set(scores) == {"generated_0", "generated_1", "copy", "translated", "noise"}
    assert scores["copy"]["nnfdist"] < 1e-6
    assert scores["noise"]["nnfdist"] > 10 * scores["translated"]["nnfdist"]
    assert is_png(tmp_path / "generated-sheet.png") and is_png(tmp_path / "nnf-maps.png")


def test_references_have_the_clip_shape():
    clip = tiny_clip()
    refs = references(clip)
    assert all(r.shape == clip.shape and r.dtype == np.uint8 for r in refs.values())
    np.testing.assert_array_equal(refs["translated"][:, 2:, 3:], clip[:, :-2, :-3])


def fake_run(n: int, speed: int, model: float, copy: float) -> dict:
    pairs = [{"frame": i, "target": i + 1, "model_mse": model, "copy_mse": copy} for i in range(3)]
    return {"n": n, "speed": speed, "results": [
        {"k": k, "model_mse": model * k, "copy_mse": copy * k, "pairs": pairs} for k in (1, 2)]}


def test_nextframe_figure_by_n_and_by_speed(tmp_path):
    runs = [fake_run(4, 1, 1e-2, 1e-3), fake_run(16, 1, 5e-3, 1e-3), fake_run(8, 2, 8e-3, 2e-3)]
    assert is_png(plot_nextframe(runs, tmp_path / "n.png", by="n"))
    assert is_png(plot_nextframe(runs, tmp_path / "s.png", by="speed"))
    with pytest.raises(ValueError, match="by must be"):
        plot_nextframe(runs, tmp_path / "x.png", by="k")


def test_nnf_colour_map_is_white_for_a_copy():
    offsets = np.zeros((4, 5, 3), np.int16)
    assert (nnf_colour_map(offsets) == 255).all()
    offsets[..., 2] = 3
    assert nnf_colour_map(offsets).shape == (4, 5, 3)


# --- CLI -----------------------------------------------------------------------------------------

def write_folder(path, frames):
    path.mkdir()
    for i, frame in enumerate(frames):
        write_image(path / f"{i:03d}.png", frame)
    return path


def test_cli_nnf_writes_json(tmp_path, capsys):
    clip = tiny_clip(frames=5)
    a = write_folder(tmp_path / "a", clip)
    out = tmp_path / "r.json"
    assert cli.main(["nnf", str(a), str(a), "--iterations", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["nnfdist"] < 1e-6 and len(result["per_frame_nnfdist"]) == 3


@pytest.mark.parametrize("argv, expected, message", [
    (["nnf", "/no/such/clip", "/no/such/ref"], 3, "no such file"),
    (["nnf", "{a}", "{a}", "--search-dims", "99"], 2, "search_dims must be in [0, 81]"),
    (["nextframe", "{a}", "--n", "40"], 2, "n=40 frames"),
    (["nextframe", "{a}", "--train-steps", "0"], 2, "--train-steps must be >= 1"),
    (["nextframe", "{a}", "--k", "1,x"], 2, "--k must be comma-separated integers"),
    (["nextframe", "{a}", "--preset", "huge"], 2, "unknown preset 'huge'"),
    (["plot-nextframe", "{a}/000.png", "--out", "{a}/x.png"], 3, "not a readable result file"),
    (["stability", "{a}"], 3, "not a bundle"),
    (["stability", "{b}", "--start-frame", "99"], 2, "--start-frame must be in [0, 7] or 'last', got 99"),
    (["stability", "{b}", "--start-frame", "end"], 2, "--start-frame must be a frame index or 'last', got 'end'"),
    (["stability", "{b}", "--correction-steps", "99"], 2, "correction_steps must be in [0, 50]"),
    (["diversity", "{a}", "--clips", "0"], 2, "--clips must be >= 1"),
    (["diversity", "{a}"], 3, "not a bundle"),
    (["upsample", "{p}"], 3, "has no trained interpolator"),
])
def test_cli_user_mistakes_are_one_line(tmp_path, capsys, argv, expected, message):
    a = write_folder(tmp_path / "a", tiny_clip(frames=5))
    b, p = make_tiny_bundle(tmp_path / "b"), make_tiny_bundle(tmp_path / "p", roles=("projector",))
    code = cli.main([arg.format(a=a, b=b.path, p=p.path) for arg in argv])
    err = capsys.readouterr().err.strip()
    assert code == expected
    assert err.count("\n") == 0 and err.startswith("sinfusion-quality: ")
    assert message in err and "Traceback" not in err


def test_cli_bugs_keep_their_traceback(tmp_path, monkeypatch):
    """An internal KeyError or ValueError is a bug: it propagates, it is not a usage line."""
    a = write_folder(tmp_path / "a", tiny_clip(frames=5))

    def broken(*args, **kwargs):
        raise KeyError("an internal key")

    monkeypatch.setattr("sinfusion.quality.nnf.nearest_neighbour_field", broken)
    with pytest.raises(KeyError, match="an internal key"):
        cli.main(["nnf", str(a), str(a), "--iterations", "1"])


def test_cli_stability_on_a_bundle(tiny_bundle, tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.json"
    (tmp_path / "elsewhere").mkdir()
    code = cli.main(["stability", str(tiny_bundle.path), "--frames", "4", "--sampling-steps", "3",
                     "--iterations", "2", "--figures", str(tmp_path), "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert len(report["per_frame_nnfdist"]) == 3
    # the shell gets the verdict in one line, with the JSON's figures
    line = capsys.readouterr().err.splitlines()[0]
    assert line.startswith("sinfusion-quality: 4 frames extrapolated from frame 0: drift ")
    assert f"{checks['ratio']:.2f}" in line and "goal of 1.5" in line and "brightness" in line
    assert (tmp_path / "stability.png").is_file()
    # without --figures nothing is drawn, anywhere (it used to write into ./docs/quality)
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert cli.main(["stability", str(tiny_bundle.path), "--frames", "4", "--sampling-steps", "3",
                     "--iterations", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "figures" not in report and not any((tmp_path / "elsewhere").iterdir())
    assert report["sampling"]["correction_weight"] == 1.0  # the bundle's, recorded with its T_corr
    # 'last': the clip's last frame, where the trainer's layout check and `trainer sample` start
    assert cli.main(["stability", str(tiny_bundle.path), "--start-frame", "last", "--frames", "4",
                     "--sampling-steps", "3", "--iterations", "2", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["start"] == tiny_bundle.manifest.frame_count - 1
    assert "extrapolated from frame 7:" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_nextframe_trains_evaluates_and_draws(tmp_path):
    pytest.importorskip("sinfusion.trainer.training", reason="the trainer package is not present")
    a = write_folder(tmp_path / "a", tiny_clip(frames=8))
    out = tmp_path / "n.json"
    argv = ["nextframe", str(a), "--n", "3", "--k", "1,2", "--train-steps", "2", "--sampling-steps",
            "2", "--quiet", "--work", str(tmp_path / "work"), "--figures", str(tmp_path),
            "--out", str(out)]
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["trained_steps"] == 2 and [r["k"] for r in result["results"]] == [1, 2]
    first = result["results"][0]
    assert len(first["pairs"]) == 4 and first["seen"]["pairs"] == 2  # (3,4)..(6,7); (0,1), (1,2)
    assert is_png(tmp_path / "nextframe-n3-s1-k1-sheet.png")
    fig = tmp_path / "by-n.png"
    assert cli.main(["plot-nextframe", str(out), "--by", "n", "--out", str(fig)]) == 0
    assert is_png(fig)


def test_cli_argparse_mistakes_are_one_line(capsys):
    code = cli.main(["nextframe", "clip.mp4", "--n", "many"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("sinfusion-quality nextframe: ") and "--n" in err


def test_upsampling_is_scored_against_the_blend_on_held_out_or_every_other_triplet(tiny_bundle,
                                                                                    tmp_path):
    from sinfusion.bundle import Bundle
    from sinfusion.quality.upsampling import upsampling_report

    frames = tiny_bundle.frames()
    report = upsampling_report(tiny_bundle, FAST_SAMPLING, sheet=tmp_path / "u.png")
    assert not report["held_out"] and [r["frame"] for r in report["rows"]] == [1, 3, 5]
    blend = (frames[0].astype(float) + frames[2]) / 2 / 255.0
    assert report["rows"][0]["blend_mse"] == pytest.approx(
        np.mean((blend - frames[1] / 255.0) ** 2))
    assert report["model_wins"] <= report["triplets"] == 3 and is_png(tmp_path / "u.png")
    assert report["sharpness"]["blend"] < report["sharpness"]["truth"]  # a blend blurs the blob
    # With held-out frames recorded by the trainer, only triplets inside the tail are scored.
    tiny_bundle.manifest.quality = {"holdout_frames": [4, 8]}
    tiny_bundle.save_manifest()
    held = upsampling_report(Bundle.open(tiny_bundle.path), FAST_SAMPLING)
    assert held["held_out"] and [r["frame"] for r in held["rows"]] == [5, 6]
    out = tmp_path / "u.json"
    assert cli.main(["upsample", str(tiny_bundle.path), "--sampling-steps", "3",
                     "--out", str(out)]) == 0
    assert json.loads(out.read_text())["triplets"] == 2
