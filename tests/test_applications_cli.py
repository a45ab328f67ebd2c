"""`trainer sample --project IMAGE` and `--summary` on tiny bundles: files written, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from sinfusion.io.files import write_image
from sinfusion.io.stills import is_pattern, numbered, one_image_problem, sizes_sheet
from sinfusion.trainer.cli import main
from sinfusion.video import read_clip
from tests.conftest import make_tiny_bundle, tiny_clip

H, W = 16, 24


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("apps")
    make_tiny_bundle(root / "video")
    make_tiny_bundle(root / "nopro", roles=("predictor",))
    write_image(root / "big.png", tiny_clip(1, 2 * H, 2 * W)[0])
    write_image(root / "same.png", tiny_clip(1, H, W, seed=3)[0])
    return root


def image(path) -> np.ndarray:
    return read_clip(path, max_side=0).frames[0]


def test_project_writes_the_result_and_a_sheet(bundles, tmp_path, capsys):
    out, sheet = tmp_path / "p.png", tmp_path / "sheet.png"
    assert main(["sample", str(bundles / "video"), "--project", str(bundles / "big.png"),
                 "--strength", "0.4", "--steps", "3", "--method", "ddim", "--out", str(out),
                 "--sheet", str(sheet)]) == 0
    err = capsys.readouterr().err
    assert "big.png is 48x32; the model's size is 24x16: resized (Lanczos)" in err
    assert "strength 0.4 = noise level 13 of 50" in err
    assert image(out).shape == (H, W, 3)
    assert image(sheet).shape == (H, 2 * W + 4, 3)  # input | result


def test_strength_zero_writes_the_input_unchanged(bundles, tmp_path):
    out = tmp_path / "same.png"
    assert main(["sample", str(bundles / "video"), "--project", str(bundles / "same.png"),
                 "--strength", "0", "--out", str(out)]) == 0
    np.testing.assert_array_equal(image(out), image(bundles / "same.png"))


def test_summary_of_a_clip_frame_to_a_pattern(bundles, tmp_path, capsys):
    pattern = tmp_path / "s-%02d.png"
    assert main(["sample", str(bundles / "video"), "--summary", "--start", "2", "--scales", "0.75,0.5",
                 "--axes", "width", "--steps", "2", "--method", "ddim", "--out", str(pattern),
                 "--sheet", str(tmp_path / "sheet.png")]) == 0
    assert [image(tmp_path / f"s-{i:02d}.png").shape for i in (0, 1)] == [(H, 18, 3), (H, 12, 3)]
    assert "a summary in 2 steps, 18x16 to 12x16" in capsys.readouterr().err
    assert image(tmp_path / "sheet.png").shape == (H, W + 18 + 12 + 8, 3)


def test_summary_of_an_image_file(bundles, tmp_path):
    out = tmp_path / "one.jpg"
    assert main(["sample", str(bundles / "video"), "--summary", str(bundles / "same.png"),
                 "--scales", "0.5", "--steps", "2", "--out", str(out)]) == 0
    assert image(out).shape == (8, 12, 3)


@pytest.mark.parametrize("args, message", [
    (["--project", "{b}/same.png", "--out", "{t}/p.mp4"],
     "--out must end in .png, .jpg or .jpeg with --project"),
    (["--summary", "--out", "{t}/s.png"], "--out {t}/s.png holds one image but this makes 5"),
    (["--summary", "--scales", "0.2", "--out", "{t}/s.png"],
     "scales[0] = 0.2 makes 5x3 of 24x16; each side must be at least 8 px"),
    (["--summary", "--scales", "0.5,x", "--out", "{t}/s.png"], "must be comma-separated numbers"),
    (["--project", "{b}/same.png", "--strength", "1.5", "--out", "{t}/p.png"],
     "--strength: must be a number in [0, 1], got '1.5'"),
    (["--project", "{b}/same.png", "--scales", "0.5", "--out", "{t}/p.png"],
     "--scales is only used with --summary"),
    (["--extrapolate", "2", "--strength", "0.5", "--out", "{t}/x.mp4"],
     "--strength is only used with --project or --summary"),
    (["--summary", "--start", "9", "--out", "{t}/s-%d.png"], "start must be in [0, 7], got 9"),
    (["--project", "{b}/same.png", "--steps", "60", "--out", "{t}/p.png"], "steps must be in [0, 50]"),
])
def test_usage_errors_are_one_line_exit_2(bundles, tmp_path, capsys, args, message):
    args = [a.format(b=bundles, t=tmp_path) for a in args]
    assert main(["sample", str(bundles / "video"), *args]) == 2
    err = capsys.readouterr().err
    assert message.format(t=tmp_path) in err and err.count("\n") == 1


def test_input_errors_exit_3(bundles, tmp_path, capsys):
    assert main(["sample", str(bundles / "nopro"), "--project", str(bundles / "same.png"),
                 "--out", str(tmp_path / "p.png")]) == 3
    assert "--project needs a trained projector; this bundle has predictor" in capsys.readouterr().err
    assert main(["sample", str(bundles / "video"), "--project", str(tmp_path / "nope.png"),
                 "--out", str(tmp_path / "p.png")]) == 3
    assert "nope.png" in capsys.readouterr().err


def test_still_patterns():
    assert is_pattern("a-%03d.png") and is_pattern("%d.jpg") and not is_pattern("a.png")
    assert not is_pattern("%d-%d.png")
    assert numbered("out/a-%03d.png", 7).as_posix() == "out/a-007.png"
    assert one_image_problem("a.png", 1) is None and one_image_problem("a-%d.png", 9) is None
    assert "a-%03d.png" in one_image_problem("a.png", 2)
    sheet = sizes_sheet([np.zeros((4, 6, 3), np.uint8), np.zeros((2, 3, 3), np.uint8)], gap=1)
    assert sheet.shape == (4, 10, 3) and sheet[3, 8].tolist() == [255, 255, 255]
