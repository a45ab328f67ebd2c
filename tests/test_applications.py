"""The image applications' core (paper 6.2): projection and visual summary in sinfusion.sampling.

An oracle denoiser that knows the clean image answers every step as the network would if it were
perfect (x0, or the eps that x_t holds), so what comes out is what the loop's arithmetic makes of it.
"""

from __future__ import annotations

import numpy as np
import pytest

from sinfusion import sampling as S
from sinfusion.schedule import make_schedule


def oracle(clean_by_shape: dict, schedule, target: str):
    """A perfect network for a known clean image (per frame size), wrapped in the DiffusionStep."""

    def denoiser(role, x, cond, t, k, coef, noise):
        x0 = np.stack([clean_by_shape[x.shape[2:]]] * len(x))
        ab = schedule.alpha_bars[t.astype(int)][:, None, None, None]
        net = x0 if target == "x0" else (x - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
        p, q, a, b, c = (coef[:, i, None, None, None] for i in range(5))
        x0_hat = np.clip(p * x + q * net, -1, 1)
        return (a * x0_hat + b * x + c * noise).astype(np.float32)

    return denoiser


def sampling_for(kind: str, target: str) -> S.BundleSampling:
    return S.BundleSampling({"projector": S.RoleSampling(make_schedule(kind, 50), target)})


def clean_image(h=12, w=20, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.95, 0.95, (3, h, w)).astype(np.float32)


@pytest.mark.parametrize("kind, target", [("linear", "eps"), ("linear", "x0"), ("cosine", "x0"),
                                          ("cosine", "eps")])
@pytest.mark.parametrize("method, steps", [("ddpm", 0), ("ddim", 0), ("ddim", 3), ("ddpm", 4)])
@pytest.mark.parametrize("strength", [0.05, 0.3, 0.6, 0.9, 1.0])
def test_oracle_recovers_the_clean_image_from_any_strength(kind, target, method, steps, strength):
    clean = clean_image()
    bundle_sampling = sampling_for(kind, target)
    den = oracle({clean.shape[1:]: clean}, bundle_sampling["projector"].schedule, target)
    # The user's image: the clean one plus an edit the oracle knows nothing about.
    edited = np.clip(clean + np.random.default_rng(2).normal(0, 0.3, clean.shape), -1, 1)
    loop = S.project(bundle_sampling, edited.astype(np.float32), strength, np.random.default_rng(3),
                     S.SamplingOptions(steps=steps, method=method))
    frames = list(S.run(loop, den))
    assert [f.index for f in frames] == [0] and frames[0].synthesized
    np.testing.assert_allclose(frames[0].image, clean, atol=2e-5)


def test_strength_zero_returns_the_input_unchanged_and_draws_nothing():
    image = clean_image()
    bundle_sampling = sampling_for("linear", "eps")
    rng = np.random.default_rng(7)
    before = rng.bit_generator.state

    def never(*args):
        raise AssertionError("strength 0 must call no engine")

    frames = list(S.run(S.project(bundle_sampling, image, 0.0, rng, S.SamplingOptions()), never))
    assert len(frames) == 1 and frames[0].image is image and not frames[0].synthesized
    assert rng.bit_generator.state == before
    assert S.projection_levels(bundle_sampling["projector"].schedule, 0.0) == [0]


def test_intermediates_are_every_level_and_end_with_the_result():
    clean = clean_image()
    bundle_sampling = sampling_for("cosine", "x0")
    schedule = bundle_sampling["projector"].schedule
    den = oracle({clean.shape[1:]: clean}, schedule, "x0")
    opts = S.SamplingOptions(steps=4, method="ddim")
    levels = S.projection_levels(schedule, 0.5, opts.steps)
    t = S.strength_level(schedule, 0.5)
    assert levels[0] == t and levels[-1] == 0 and len(levels) == 5
    with_steps = list(S.run(S.project(bundle_sampling, clean * 0.5, 0.5, np.random.default_rng(1), opts,
                                      intermediates=True, first_index=3), den))
    assert [f.index for f in with_steps] == [3, 4, 5, 6, 7]
    plain = list(S.run(S.project(bundle_sampling, clean * 0.5, 0.5, np.random.default_rng(1), opts), den))
    # Same seed, same draws: the last intermediate is the plain call's result.
    np.testing.assert_array_equal(with_steps[-1].image, plain[0].image)
    # The first is the noised input at level t: its distance to the clean image is the noise's.
    noise_std = np.sqrt(1 - schedule.alpha_bars[t])
    assert abs(np.std(with_steps[0].image - np.sqrt(schedule.alpha_bars[t]) * clean * 0.5)
               - noise_std) < 0.1


def test_strength_maps_to_the_level_whose_noise_std_reaches_it():
    for kind in ("linear", "cosine"):
        s = make_schedule(kind, 50)
        std = np.sqrt(1 - s.alpha_bars)
        assert S.strength_level(s, 0.0) == 0 and S.strength_level(s, 1.0) == 50
        for strength in (0.01, 0.25, 0.5, 0.75, 0.99):
            t = S.strength_level(s, strength)
            assert std[t] >= strength > std[t - 1]
    assert S.strength_level(make_schedule("linear", 50), 0.5) == 9
    assert S.strength_level(make_schedule("cosine", 50), 0.5) == 17


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_bad_strength_is_refused(bad):
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        S.strength_level(make_schedule("linear", 50), bad)


def test_summary_sizes_and_refusals():
    assert S.summary_sizes((144, 256), [0.9, 0.5]) == [(130, 230), (72, 128)]
    assert S.summary_sizes((144, 256), [0.5], "width") == [(144, 128)]
    assert S.summary_sizes((144, 256), [0.5], "height") == [(72, 256)]
    with pytest.raises(ValueError, match=r"scales\[1\] must be in \(0, 1\], got 1.5"):
        S.summary_sizes((144, 256), [0.5, 1.5])
    with pytest.raises(ValueError, match=r"scales\[0\] = 0.05 makes 13x7 of 256x144; each side"):
        S.summary_sizes((144, 256), [0.05])
    with pytest.raises(ValueError, match="axes must be one of both, width, height"):
        S.summary_sizes((144, 256), [0.5], "depth")
    with pytest.raises(ValueError, match="at least one scale"):
        S.summary_sizes((144, 256), [])


def test_summary_with_an_oracle_is_the_chain_of_resizes():
    """A perfect projector keeps each resized image as it is: the summary is the resizes alone."""
    clean = clean_image(16, 24)
    scales = [0.9, 0.75, 0.5]
    sizes = S.summary_sizes(clean.shape[1:], scales)
    expected, x = {}, clean
    for size in sizes:
        x = S.resize_image(x, size)
        expected[size] = x
    bundle_sampling = sampling_for("linear", "eps")
    den = oracle(expected, bundle_sampling["projector"].schedule, "eps")
    frames = list(S.run(S.summarize(bundle_sampling, clean, scales, 0.7, np.random.default_rng(0),
                                    S.SamplingOptions(steps=5, method="ddim")), den))
    assert [f.index for f in frames] == [0, 1, 2] and all(f.synthesized for f in frames)
    for frame, size in zip(frames, sizes):
        assert frame.image.shape == (3, *size)
        np.testing.assert_allclose(frame.image, expected[size], atol=2e-5)


def test_summary_at_strength_zero_only_resizes():
    clean = clean_image(16, 24)
    frames = list(S.run(S.summarize(sampling_for("linear", "eps"), clean, [0.5], 0.0,
                                    np.random.default_rng(0), S.SamplingOptions()), None))
    assert len(frames) == 1 and not frames[0].synthesized
    np.testing.assert_array_equal(frames[0].image, S.resize_image(clean, (8, 12)))


def test_projection_batches_with_other_streams():
    """Projection loops are ordinary loops: run in lock-step they give what they give alone."""
    clean = clean_image()
    bundle_sampling = sampling_for("linear", "eps")
    den = oracle({clean.shape[1:]: clean}, bundle_sampling["projector"].schedule, "eps")
    opts = S.SamplingOptions(steps=3)

    def loop(seed):
        return S.project(bundle_sampling, clean * 0.8, 0.7, np.random.default_rng(seed), opts,
                         intermediates=True)

    alone = [[f.image for f in S.run(loop(seed), den)] for seed in (1, 2)]
    together: list[list] = [[], []]
    S.run_lockstep([loop(1), loop(2)], den, lambda i, f: together[i].append(f.image))
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(np.stack(a), np.stack(b))
