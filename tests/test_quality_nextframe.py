"""Next-frame experiment: splits, scoring, the lock-step driver, and a closed-form oracle model."""

from __future__ import annotations

import numpy as np
import pytest

from sinfusion import sampling as S
from sinfusion.frames import to_model
from sinfusion.quality.nextframe import (evaluate, make_split, mse_to_psnr, predict_pairs, score_pairs,
                               train_split)
from sinfusion.sampling import run_lockstep
from sinfusion.schedule import make_schedule
from tests.conftest import tiny_clip


def bundle_sampling() -> S.BundleSampling:
    return S.BundleSampling({"predictor": S.RoleSampling(make_schedule("cosine", 50), "eps")})


def shifted_oracle(frames: np.ndarray, shift: int):
    """A Predictor that knows the truth: conditioned on frame i it steers to frame i + shift."""
    x = to_model(frames)

    def denoiser(role, xt, cond, t, k, coef, noise):
        out = np.empty_like(xt)
        for b in range(len(xt)):
            i = int(np.argmin(((x - cond[b]) ** 2).sum(axis=(1, 2, 3))))
            x0 = x[i + shift]
            a, bb, c = coef[b, 2], coef[b, 3], coef[b, 4]
            out[b] = a * x0 + bb * xt[b] + c * noise[b]
        return out

    return denoiser


def test_split_trains_on_a_slice_and_tests_only_unseen_pairs():
    split = make_split(33, n=16, speed=1, k=1)
    assert split.train == list(range(16))
    assert split.pairs == [(i, i + 1) for i in range(16, 32)]
    assert split.seen == [(i, i + 1) for i in range(15)]
    assert split.seen_split().pairs == split.seen

    fast = make_split(33, n=8, speed=2, k=1)
    assert fast.train == list(range(0, 16, 2))
    assert fast.pairs == [(i, i + 2) for i in range(16, 31, 2)]

    middle = make_split(33, n=4, speed=1, k=2, start=10)
    seen = set(middle.train)
    assert middle.train == [10, 11, 12, 13]
    assert all(i not in seen and j not in seen and j == i + 2 for i, j in middle.pairs)
    assert (0, 2) in middle.pairs and (7, 9) in middle.pairs and (14, 16) in middle.pairs
    assert len(make_split(33, n=4, max_pairs=5).pairs) == 5


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=40), "need"),
    (dict(n=16, k=0), "k must be"),
    (dict(n=16, k=-1), "positive"),
    (dict(n=16, speed=0), "speed"),
    (dict(n=1), "n \\(training frames\\)"),
    (dict(n=32, k=1), "no unseen frame pairs"),
])
def test_bad_splits_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_split(33, **kwargs)


def test_scores_of_a_perfect_prediction_and_of_the_copy():
    frames = tiny_clip(frames=8)
    split = make_split(8, n=3, k=1)
    perfect = to_model(frames[[j for _, j in split.pairs]])
    scores = score_pairs(frames, split, perfect)
    assert scores["model_mse"] < 1e-10
    unit = frames.astype(np.float64) / 255
    copy = np.mean([np.mean((unit[i] - unit[j]) ** 2) for i, j in split.pairs])
    assert scores["copy_mse"] == pytest.approx(copy)
    assert scores["model_wins"] == len(split.pairs)
    assert mse_to_psnr(1e-3) == pytest.approx(30.0)


def test_oracle_model_beats_copy_and_a_wrong_target_does_not(tmp_path):
    frames = tiny_clip(frames=12)
    split = make_split(12, n=3, speed=2, k=1)  # pairs (6, 8) and (8, 10) in original frames
    assert split.pairs == [(6, 8), (8, 10)]
    options = S.SamplingOptions(correction_steps=0)
    right = evaluate(shifted_oracle(frames, 2), bundle_sampling(), frames, split, options,
                     sheet=tmp_path / "sheet.png")
    assert right["model_mse"] < 1e-8 < right["copy_mse"]
    from PIL import Image

    assert Image.open(tmp_path / "sheet.png").size == (2 * 24 + 2, 3 * 16 + 4)  # 2 pairs x 3 rows
    wrong = evaluate(shifted_oracle(frames, 1), bundle_sampling(), frames, split, options)
    assert wrong["model_mse"] > 1e-4  # the scorer compares with frame i+k*S, not i+1


def test_batched_predictions_equal_one_by_one(tiny_bundle):
    from sinfusion.runtimes.torch_runtime import TorchDenoiser

    frames = tiny_bundle.frames()
    denoiser = TorchDenoiser(tiny_bundle, roles=["predictor", "projector"])
    split = make_split(len(frames), n=3, k=1)
    options = S.SamplingOptions(steps=5)
    batched = predict_pairs(denoiser, tiny_bundle.sampling(), frames, split, options, seed=4, batch=8)
    single = predict_pairs(denoiser, tiny_bundle.sampling(), frames, split, options, seed=4, batch=1)
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_lockstep_gives_the_frames_of_separate_runs(tiny_bundle):
    from sinfusion.runtimes.torch_runtime import TorchDenoiser

    denoiser = TorchDenoiser(tiny_bundle)
    bundle_sampling, options = tiny_bundle.sampling(), S.SamplingOptions(steps=4, method="ddpm")

    def loops():
        return [S.generate(bundle_sampling, (16, 24), 3, np.random.default_rng(s), options) for s in (1, 2)]

    alone = [[f.image for f in S.run(loop, denoiser)] for loop in loops()]
    together: list[list] = [[], []]
    run_lockstep(loops(), denoiser, lambda i, f: together[i].append(f.image))
    for a, b in zip(alone, together):  # batched convolutions round differently; the correction's
        np.testing.assert_allclose(np.stack(a), np.stack(b), atol=1e-4)  # rescale carries it on


@pytest.mark.slow
def test_train_split_trains_only_on_the_slice_and_resumes(tmp_path):
    training = pytest.importorskip("sinfusion.trainer.training", reason="the trainer package is not present")
    from sinfusion.trainer.presets import get_preset

    frames = tiny_clip(frames=8)
    split = make_split(8, n=4, k=1)
    config = get_preset("tiny", channels=8, blocks=2, predictor_steps=3, checkpoint_every=3,
                        preview_every=0)
    bundle = train_split(frames, split, tmp_path / "b", config)
    np.testing.assert_array_equal(bundle.frames(), frames[:4])
    assert bundle.role("predictor").trained_steps == 3
    again = train_split(frames, split, tmp_path / "b", config)  # finished: reused, not retrained
    assert again.role("predictor").sha256 == bundle.role("predictor").sha256
    other = make_split(8, n=4, start=2, k=1)
    with pytest.raises(training.TrainerError, match="other frames"):
        train_split(frames, other, tmp_path / "b", config)
