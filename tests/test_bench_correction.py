"""bench/bench_correction.py: one bundle's Predictor corrected by another's Projector, per level."""

from __future__ import annotations

from bench.bench_correction import main
from tests.conftest import make_tiny_bundle


def test_scores_a_predictor_with_another_bundles_projector(tmp_path, capsys):
    predictor = make_tiny_bundle(tmp_path / "pred", frames=12)
    projector = make_tiny_bundle(tmp_path / "proj", roles=("projector",), frames=12, seed=3)
    figures = tmp_path / "sheets"
    assert main([str(predictor.path), "--projector", str(projector.path), "--tcorr", "0,1",
                 "--frames", "6", "--figures", str(figures)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("T_corr")]
    assert [line.split(":")[0] for line in lines] == ["T_corr 0", "T_corr 1"]
    assert all("vs copy" in line and "ratio" in line for line in lines)
    assert sorted(p.name for p in figures.iterdir()) == ["pred-tcorr0-sheet.png", "pred-tcorr1-sheet.png"]
    # the same with a coarse correction made with a margin, as the cpu preset serves
    assert main([str(predictor.path), "--tcorr", "1", "--frames", "4", "--margin", "2",
                 "--coarse", "3:0.25"]) == 0
    assert "T_corr 1: next frame" in capsys.readouterr().out
