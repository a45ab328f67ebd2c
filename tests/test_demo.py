"""The README's demo, at smoke size: every real tool in a subprocess, end to end."""

from __future__ import annotations

import numpy as np
import pytest

from sinfusion.video import read_clip
from tools import demo


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--quick", "--frames", "6"]) == 0
    extrapolated = read_clip(out / "extrapolated.mp4", max_side=0)
    upsampled = read_clip(out / "upsampled_x4.mp4", max_side=0)
    assert extrapolated.frames.shape == (6, 64, 96, 3)
    assert upsampled.frames.shape == (21, 64, 96, 3)  # 6 originals, 3 new frames in each of 5 gaps
    sheet = read_clip(out / "contact_sheet.png", max_side=0).frames[0]
    assert sheet.shape[0] > 3 * 64 and np.ptp(sheet) > 0
    assert (out / "models" / "sample" / "manifest.json").is_file()
