"""Schedules against closed forms; the loops against a closed-form oracle denoiser."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sinfusion import sampling as S
from sinfusion.schedule import cosine_schedule, linear_schedule, make_schedule


def test_linear_schedule_closed_form():
    s = linear_schedule(50, 2e-3, 0.4)
    assert s.betas[0] == 0 and s.alpha_bars[0] == 1
    assert s.betas[1] == pytest.approx(2e-3) and s.betas[50] == pytest.approx(0.4)
    expected = np.prod([1 - (2e-3 + (0.4 - 2e-3) * i / 49) for i in range(50)])
    assert s.alpha_bars[50] == pytest.approx(expected, rel=1e-12)


def test_cosine_schedule_closed_form():
    s = cosine_schedule(50)
    for t in (1, 10, 25, 49):
        f = lambda u: math.cos((u / 50 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        assert s.alpha_bars[t] == pytest.approx(f(t) / f(0), rel=1e-9)
    assert np.all(np.diff(s.alpha_bars) < 0)
    assert s.alpha_bars[50] < 1e-3


def test_unknown_schedule_lists_valid_ones():
    with pytest.raises(ValueError, match="cosine, linear"):
        make_schedule("sigmoid")


@pytest.mark.parametrize("start,steps,expected", [(50, 0, 51), (50, 10, 11), (3, 0, 4), (3, 10, 4)])
def test_timesteps_visit_levels(start, steps, expected):
    levels = S.timesteps(start, steps)
    assert levels[0] == start and levels[-1] == 0 and len(levels) == expected
    assert all(a > b for a, b in zip(levels, levels[1:]))


def test_ddpm_single_steps_match_the_posterior():
    s = cosine_schedule(50)
    plan = dict(S.step_plan(s, "x0", 50))
    t = 20
    p, q, a, b, c = plan[t]
    ab, abp = s.alpha_bars[t], s.alpha_bars[t - 1]
    assert (p, q) == (0.0, 1.0)
    assert a == pytest.approx(math.sqrt(abp) * s.betas[t] / (1 - ab), rel=1e-5)
    assert b == pytest.approx(math.sqrt(s.alphas[t]) * (1 - abp) / (1 - ab), rel=1e-5)
    assert c ** 2 == pytest.approx(s.posterior_variance()[t], rel=1e-5)


def test_eps_target_converts_to_x0():
    s = cosine_schedule(50)
    p, q, *_ = dict(S.step_plan(s, "eps", 50))[30]
    ab = s.alpha_bars[30]
    x0, eps = 0.3, -1.2
    xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
    assert p * xt + q * eps == pytest.approx(x0, abs=1e-5)


def oracle_for(x0):
    """A denoiser that knows the clean frame: x0_hat = x0 exactly."""

    def denoiser(role, x, cond, t, k, coef, noise):
        c = coef[:, :, None, None]
        return c[:, 2:3] * x0[None] + c[:, 3:4] * x + c[:, 4:5] * noise

    return denoiser


@pytest.mark.parametrize("method", S.METHODS)
@pytest.mark.parametrize("steps", [0, 1, 7])
def test_oracle_denoiser_recovers_x0(method, steps):
    x0 = np.random.default_rng(1).uniform(-0.9, 0.9, (3, 8, 8)).astype(np.float32)
    rs = S.RoleSampling(cosine_schedule(50), "x0")
    x = np.random.default_rng(2).standard_normal((3, 8, 8)).astype(np.float32)
    loop = S.denoise("projector", rs, x, np.random.default_rng(3), start=50, steps=steps,
                     method=method)
    np.testing.assert_allclose(S.run_to_value(loop, oracle_for(x0)), x0, atol=1e-5)


def bundle_sampling():
    s = cosine_schedule(50)
    return S.BundleSampling({r: S.RoleSampling(s, "x0") for r in ("predictor", "projector", "interpolator")})


def test_streams_emit_frames_in_order_and_range():
    x0 = np.full((3, 8, 8), 0.25, np.float32)
    rng = np.random.default_rng(0)
    frames = list(S.run(S.extrapolate(bundle_sampling(), x0, 4, -2, rng, S.SamplingOptions()),
                        oracle_for(x0)))
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert all(f.synthesized and np.abs(f.image).max() <= 1 for f in frames)
    up = list(S.run(S.upsample(bundle_sampling(), [x0, x0, x0], 4, rng, S.SamplingOptions(steps=3)),
                    oracle_for(x0)))
    assert [f.index for f in up] == list(range(9))
    assert [f.synthesized for f in up] == [False, True, True, True] * 2 + [False]


def test_a_new_clip_of_a_video_starts_from_a_clip_frame_the_seed_picks():
    """Generate with the clip: its first frame is the Projector's projection of the clip frame its
    seed draws, from GENERATE_STRENGTH's level, given that frame's colours; then the extrapolation.
    (The oracle's frame is the picked one at half its contrast: only the picked frame's colours
    make it that frame again.)"""
    from sinfusion.frames import to_model

    clip = np.random.default_rng(4).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    start = S.strength_level(cosine_schedule(50), S.GENERATE_STRENGTH)
    for seed in (0, 1, 2, 3):
        picked = to_model(clip[int(np.random.default_rng(seed).integers(len(clip)))])
        oracle, levels = oracle_for(0.5 * picked), []

        def denoiser(role, x, cond, t, *rest):
            levels.append((role, int(t[0])))
            return oracle(role, x, cond, t, *rest)

        frames = list(S.run(S.generate(bundle_sampling(), (8, 8), 3, np.random.default_rng(seed),
                                       S.SamplingOptions(steps=2), clip=clip), denoiser))
        assert [f.index for f in frames] == [0, 1, 2]
        np.testing.assert_allclose(frames[0].image, picked, atol=1e-4)
        assert levels[0] == ("projector", start)
    with pytest.raises(ValueError, match="clip frames are 8x8, the new clip 6x8"):
        next(S.generate(bundle_sampling(), (8, 6), 2, np.random.default_rng(0), S.SamplingOptions(),
                        clip=clip))


def test_generate_takes_extrapolate_defaults_for_a_video_and_the_papers_for_an_image():
    assert S.generate_defaults("video") == "extrapolate"
    assert S.SamplingOptions.chosen(loop=S.generate_defaults("image")) == S.PAPER_SAMPLING


def test_same_seed_same_frames_and_batched_equals_alone():
    """Batching requests of two streams gives each the frames it gets alone (per-stream RNG)."""
    x0 = np.random.default_rng(5).uniform(-1, 1, (3, 8, 8)).astype(np.float32)
    den = oracle_for(x0 * 0.5)
    opts = S.SamplingOptions(steps=5)

    def loop(seed):
        return S.extrapolate(bundle_sampling(), x0, 2, 1, np.random.default_rng(seed), opts)

    alone = [[f.image for f in S.run(loop(seed), den)] for seed in (1, 2)]
    got, batches = [[], []], []

    def batched(role, x, *rest):
        batches.append(len(x))
        return den(role, x, *rest)

    S.run_lockstep([loop(1), loop(2)], batched, lambda i, f: got[i].append(f.image))
    assert set(batches) == {2}  # every engine call carried both streams
    for a, b in zip(alone, got):
        np.testing.assert_array_equal(np.stack(a), np.stack(b))


@pytest.mark.parametrize("bad", [0, 4, -4])
def test_bad_k_is_refused(bad):
    with pytest.raises(ValueError, match="k must be"):
        next(S.extrapolate(bundle_sampling(), np.zeros((3, 4, 4), np.float32), 1, bad,
                           np.random.default_rng(0), S.SamplingOptions()))


def test_defaults_per_loop_and_the_papers_sampler():
    # Predictor / Interpolator loops: the fast default; Projector-first loops: the paper's DDPM.
    assert S.SamplingOptions.chosen(default_correction=0) == S.SamplingOptions(S.DEFAULT_DDIM_STEPS,
                                                                                "ddim", 0)
    assert S.SamplingOptions.chosen(loop="upsample").method == "ddim"
    # the bundle's T_corr for streams; in-between frames come from real frames: uncorrected unless asked
    assert S.SamplingOptions.chosen(default_correction=1).correction_steps == 1
    assert S.SamplingOptions.chosen(default_correction=1, loop="upsample").correction_steps == 0
    assert S.SamplingOptions.chosen(correction_steps=2, loop="upsample").correction_steps == 2
    for loop in ("generate", "project", "summarize"):
        assert S.SamplingOptions.chosen(loop=loop) == S.SamplingOptions(0, "ddpm", 3)
    # a method without steps gets that method's default; what is given is kept
    assert S.SamplingOptions.chosen(method="ddpm").steps == 0
    assert S.SamplingOptions.chosen(method="ddim", loop="generate").steps == S.DEFAULT_DDIM_STEPS
    assert S.SamplingOptions.chosen(steps=7, correction_steps=1, loop="project") == S.SamplingOptions(
        7, "ddpm", 1)
    assert S.PAPER_SAMPLING == S.SamplingOptions(0, "ddpm", 3)
    from dataclasses import asdict

    from sinfusion.io.cli import PAPER_SAMPLER  # the torch-free flag values (CLIs, client)
    assert PAPER_SAMPLER == asdict(S.PAPER_SAMPLING)


def test_bad_options_name_the_field():
    with pytest.raises(ValueError, match="steps must be in"):
        S.SamplingOptions(steps=51).validate(50)
    with pytest.raises(ValueError, match="method must be"):
        S.SamplingOptions(method="euler").validate(50)
    with pytest.raises(ValueError, match="factor must be"):
        next(S.upsample(bundle_sampling(), [], 3, np.random.default_rng(0), S.SamplingOptions()))
