"""The trainer's own quality report: held-out split, stop rule, time budget, anchored networks,
and the manifest record (tiny clips and networks, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_clip

from sinfusion.bundle import Bundle
from sinfusion.config import default_config
from sinfusion.network import SinFusionNet
from sinfusion.nextframe import score_pairs
from sinfusion import sampling as S
from sinfusion.sampling import BundleSampling, RoleSampling, SamplingOptions
from sinfusion.schedule import make_schedule
from sinfusion.trainer.monitor import (InBetweenMonitor, Measurement, NextFrameMonitor, holdout_count,
                                       holdout_pairs, summary_line, upsampling_line, verdict)
from sinfusion.trainer.presets import get_preset
from sinfusion.trainer.training import TrainerError, train_bundle


def test_holdout_is_the_clip_tail_sized_automatically_or_as_asked():
    assert holdout_count(8) == 0  # too short to spare frames
    assert holdout_count(12) == 3 and holdout_count(33) == 6 and holdout_count(99) == 16
    assert holdout_count(500) == 16
    assert holdout_count(33, 0) == 0 and holdout_count(33, 5) == 5
    with pytest.raises(ValueError, match="at least 4"):
        holdout_count(6, 3)
    with pytest.raises(ValueError, match="at least 2"):
        holdout_count(33, 1)
    assert holdout_pairs(33, 6) == [(27, 28), (28, 29), (29, 30), (30, 31), (31, 32)]
    assert holdout_pairs(33, 0) == []


def _history(gains: list[float], copy: float = 30.0, won: int = 9) -> NextFrameMonitor:
    monitor = NextFrameMonitor(np.zeros((2, 4, 4, 3), np.uint8), [(0, 1)], stop_margin_db=0.5,
                               patience=3, min_gain_db=0.05)
    monitor.history = [Measurement(i, float(i), copy + g, copy, won, 10)
                       for i, g in enumerate(gains)]
    return monitor


def test_stop_rule_needs_the_margin_and_a_plateau():
    assert not _history([0.6, 0.6, 0.6]).should_stop()  # too few measurements to call a plateau
    assert _history([0.2, 0.6, 0.61, 0.6, 0.62]).should_stop()  # beats copy, no longer improving
    assert not _history([0.2, 0.4, 0.5, 0.6, 0.7]).should_stop()  # still improving
    assert not _history([0.4, 0.4, 0.4, 0.4, 0.4]).should_stop()  # plateau below the margin
    off = _history([0.2, 0.6, 0.61, 0.6, 0.62])
    off.stop_margin_db = 0.0
    assert not off.should_stop()


def test_verdict_and_summary_line():
    assert verdict(Measurement(1, 1.0, 31.0, 30.0, 8, 10)) == "beats copy"
    assert verdict(Measurement(1, 1.0, 31.0, 30.0, 4, 10)) == "ties copy"  # most pairs must be won
    assert verdict(Measurement(1, 1.0, 29.0, 30.0, 0, 10)) == "loses to copy"
    record = {"pairs": 5, "model_psnr": 31.234, "copy_psnr": 30.0, "gain_db": 1.234,
              "pairs_won": 4, "verdict": "beats copy"}
    assert summary_line(record) == ("next frame on 5 held-out pairs: model 31.23 dB vs copy "
                                    "30.00 dB (+1.23, 4/5 won): beats copy")
    assert summary_line(dict(record, pairs=1, pairs_won=1)).startswith("next frame on 1 held-out pair:")
    assert "not measured" in summary_line({})
    assert "not measured" in summary_line({"upsampling": {"triplets": 3}})  # Interpolator alone
    # the trainer's last line: a model that does not beat copy is told what to do about it
    from sinfusion.trainer.cli import quality_report
    assert quality_report(record) == summary_line(record)
    tie = dict(record, pairs_won=2, verdict="ties copy")
    assert quality_report(tie).endswith("no closer to the clip's than repeating the last frame: "
                                        "train longer (--time), or on a clip with more motion")


@pytest.mark.parametrize("role", ["predictor", "interpolator"])
def test_anchored_network_starts_at_copy_or_blend(role):
    net = SinFusionNet(default_config(role, channels=8, blocks=2, anchored=True)).eval()
    cond = torch.rand(2, net.config.cond_channels, 12, 16) * 2 - 1
    x = torch.cat([cond, torch.randn(2, 3, 12, 16)], dim=1)
    out = net(x, torch.tensor([3.0, 40.0]), torch.tensor([1.0, -1.0]) if net.config.use_k else None)
    anchor = cond.unflatten(1, (-1, 3)).mean(dim=1)
    assert torch.allclose(out, anchor, atol=1e-5)
    # Trained or not, the change keeps each channel's mean (and, for the Predictor, its contrast):
    # what stops an extrapolation from drifting in exposure frame after frame.
    with torch.no_grad():
        torch.nn.init.normal_(net.head.weight, std=0.5)
        torch.nn.init.normal_(net.head.bias, std=0.5)
    out = net(x, torch.tensor([3.0, 40.0]), torch.tensor([1.0, -1.0]) if net.config.use_k else None)
    assert not torch.allclose(out, anchor, atol=1e-2)
    assert torch.allclose(out.mean(dim=(2, 3)), anchor.mean(dim=(2, 3)), atol=1e-5)
    if role == "predictor":
        assert torch.allclose(out.std(dim=(2, 3)), anchor.std(dim=(2, 3)), atol=1e-4)
    with pytest.raises(ValueError, match="conditioning frames"):
        default_config("projector", channels=8, blocks=2, anchored=True)


def untrained_anchored(role: str):
    """A runtime over an untrained anchored network of `role` (it returns its anchor), and its sampling."""
    from sinfusion.runtimes.torch_runtime import TorchDenoiser

    net = SinFusionNet(default_config(role, channels=8, blocks=2, anchored=True))
    return (TorchDenoiser.from_networks({role: net}),
            BundleSampling({role: RoleSampling(make_schedule("cosine", 50), "x0")}))


def test_monitor_scores_an_untrained_anchored_predictor_as_copy():
    frames = tiny_clip(6, 16, 24)
    denoiser, bundle_sampling = untrained_anchored("predictor")
    monitor = NextFrameMonitor(frames, [(0, 1), (2, 3)],
                               options=SamplingOptions(steps=5, method="ddim", correction_steps=0))
    m = monitor.measure_with(denoiser, bundle_sampling, step=0, elapsed_s=0.0)
    copy = score_pairs(frames, [(0, 1), (2, 3)], np.stack([frames[0], frames[2]]).astype(np.float32)
                       .transpose(0, 3, 1, 2) / 127.5 - 1.0)
    assert m.copy_psnr == pytest.approx(copy["copy_psnr"], abs=1e-3)
    assert m.model_psnr == pytest.approx(m.copy_psnr, abs=0.05)  # the anchor is the copy


def test_the_monitor_holds_predictions_only_to_the_trained_frames_layouts():
    """A bundle held to the clip scores its held-out pairs held to the other frames' layouts: never
    to the frames it is scored against; a bundle without clip layouts keeps none."""
    frames = tiny_clip(8, 16, 24)
    monitor = NextFrameMonitor(frames, [(5, 6), (6, 7)], holdout=(5, 8))
    held = BundleSampling(layout_pull=0.3, layout_sigma=0.6, layout_window=3,
                          clip_layouts=S.clip_layouts(frames, 0.6))
    np.testing.assert_array_equal(monitor.seen_layouts(held), S.clip_layouts(frames[:5], 0.6))
    assert monitor.seen_layouts(BundleSampling()) is None


def test_in_between_monitor_scores_an_untrained_anchored_interpolator_as_the_blend():
    frames = tiny_clip(6, 16, 24)
    denoiser, bundle_sampling = untrained_anchored("interpolator")
    monitor = InBetweenMonitor(frames, [(0, 2), (3, 5)],
                               options=SamplingOptions(steps=5, method="ddim", correction_steps=0))
    m = monitor.measure_with(denoiser, bundle_sampling, step=0, elapsed_s=0.0)
    truth = frames.astype(np.float64) / 255.0
    blend_mse = np.mean([np.mean(((truth[i] + truth[i + 2]) / 2 - truth[i + 1]) ** 2) for i in (0, 3)])
    assert m.copy_psnr == pytest.approx(10 * np.log10(1 / blend_mse), abs=1e-3)
    assert m.model_psnr == pytest.approx(m.copy_psnr, abs=0.05)  # the anchor is the blend
    assert monitor.record()["verdict"] in ("ties blend", "beats blend", "loses to blend")


def test_training_holds_out_the_tail_and_records_the_score(tmp_path):
    clip = tiny_clip(14, 16, 24)
    cfg = get_preset("tiny", channels=8, blocks=2, batch_size=1, checkpoint_every=0,
                     preview_every=0, anchored=True, eval_every_s=0.01, stop_margin_db=0.0,
                     correction_steps=2, correction_weight=0.5, correction_passes=2).with_steps(6)
    bundle = train_bundle(clip, tmp_path / "b", cfg, progress=False, device="cpu")
    q = Bundle.open(tmp_path / "b").manifest.quality
    assert q["holdout_frames"] == [11, 14] and q["pairs"] == 2 and q["k"] == 1
    assert q["predictor_steps"] == 6 and q["verdict"] in ("beats copy", "ties copy", "loses to copy")
    assert q["gain_db"] == pytest.approx(q["model_psnr"] - q["copy_psnr"], abs=2e-3)
    # the served sampler: the bundle's default correction, with the Projector trained first
    assert q["sampling"]["correction_steps"] == 2 == bundle.manifest.correction_steps
    assert q["sampling"]["correction_weight"] == 0.5 == bundle.manifest.correction_weight
    assert q["sampling"]["correction_passes"] == 2 == bundle.manifest.correction_passes
    assert len(bundle.frames()) == 14  # the tail stays in the bundle for clients
    assert bundle.role("predictor").settings["holdout_frames"] == 3
    assert bundle.role("predictor").network.anchored
    assert not bundle.role("projector").network.anchored
    # the Interpolator is scored on the tail's triplet against the blend, under its own key
    up = q["upsampling"]
    assert up["triplets"] == 1 and up["interpolator_steps"] <= 6 and up["trained_steps"] == 6
    assert up["gain_db"] == pytest.approx(up["model_psnr"] - up["blend_psnr"], abs=2e-3)
    # with Upsample's default: in-between frames come from real frames and are not corrected
    assert up["sampling"]["method"] == "ddim" and up["sampling"]["correction_steps"] == 0
    assert "blend" in upsampling_line(up) and " 1 held-out triplet: " in upsampling_line(up)


def test_time_budget_ends_a_role_early_and_resume_does_not_redo_it(tmp_path):
    clip = tiny_clip(8, 16, 24)
    cfg = get_preset("tiny", channels=8, blocks=2, batch_size=1, checkpoint_every=0,
                     preview_every=0, time_budget_s=0.3, holdout=0).with_steps(10**6)
    bundle = train_bundle(clip, tmp_path / "b", cfg, roles=["predictor"], progress=False,
                          device="cpu")
    steps = bundle.role("predictor").trained_steps
    assert 1 <= steps < 10**6
    again = train_bundle(clip, tmp_path / "b", cfg, resume=True, progress=False, device="cpu")
    assert again.role("predictor").trained_steps == steps
    assert bundle.manifest.quality == {}  # no held-out frames, no report


class _Scripted(NextFrameMonitor):
    """A monitor whose scores are given: tests the keep-best bookkeeping alone."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__(np.zeros((2, 4, 4, 3), np.uint8), [(0, 1)], min_gain_db=0.05)
        self.scores = iter(scores)

    def score(self, run, bundle) -> Measurement:
        m = Measurement(run.state.step, float(run.state.step), next(self.scores), 30.0, 1, 1)
        self.history.append(m)
        return m


class _Run:
    def __init__(self) -> None:
        self.ema = torch.nn.Linear(2, 2).requires_grad_(False)
        self.state = type("State", (), {"step": 0})()


class _Bundle:
    manifest = type("Manifest", (), {"quality": {}})()


@pytest.mark.parametrize("scores, served_step", [([29.0, 31.0, 30.5], 2), ([29.0, 31.0, 30.99], 3),
                                                 ([29.0, 30.0, 31.0], 3)])
def test_the_best_weights_are_served_when_the_last_score_worse(scores, served_step):
    monitor, run, bundle = _Scripted(scores), _Run(), _Bundle()
    weights = {}
    for step in (1, 2):
        run.state.step = step
        with torch.no_grad():
            run.ema.weight.fill_(step)
        weights[step] = run.ema.weight.clone()
        monitor.measure(run, bundle)
    run.state.step = 3
    with torch.no_grad():
        run.ema.weight.fill_(3)
    monitor.finish(run, bundle)
    q = bundle.manifest.quality
    assert q["predictor_steps"] == served_step and q["trained_steps"] == 3
    assert q["model_psnr"] == scores[served_step - 1] and q["measurements"] == 3
    assert float(run.ema.weight[0, 0]) == served_step  # the served weights are those measured


def test_a_holdout_the_clip_cannot_spare_is_a_trainer_error(tmp_path):
    cfg = get_preset("tiny", channels=8, blocks=2, holdout=12).with_steps(1)
    with pytest.raises(TrainerError, match="holdout 12 leaves 2 frames"):
        train_bundle(tiny_clip(14, 16, 24), tmp_path / "b", cfg, progress=False, device="cpu")
    assert not (tmp_path / "b").exists()  # refused before anything is written
