"""bench/bench_advance.py runs both runtimes' paths at a tiny size and reports where the time went."""

from __future__ import annotations

import pytest

from bench import bench_advance


@pytest.mark.parametrize("runtime", ["host", "resident"])
def test_bench_advance_profiles_the_loops_between_engine_calls(runtime, capsys):
    assert bench_advance.main(["--streams", "2", "--size", "24x16", "--frames", "2",
                               "--runtime", runtime, "--top", "0"]) == 0
    out = capsys.readouterr().out
    # 2 frames a stream, each 10 + 3 steps and the correction's noising: every call ran both streams
    assert f"2 streams at 24x16, {runtime}: " in out and " 4 frames; engine " in out
    assert "sampling.py" in out and "predict_frame" in out  # the whole profile, the loop's own lines
