"""NNFDIV / NNFDIST: the references the paper's metric must order correctly, on tiny clips."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from sinfusion.quality.nnf import (PatchMatchOptions, encode_offsets, nearest_neighbour_field, nnf_div,
                         patch_rows)

FAST = PatchMatchOptions(iterations=5, seed=0)


def textured_clip(frames: int = 8, height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
    """Random texture smoothed over space and time: every 3x3x3 patch is distinctive (no exact repeats,
    which would make the nearest neighbour ambiguous)."""
    rng = np.random.default_rng(seed)
    x = rng.random((frames, height, width, 3))
    kernel = np.ones(3) / 3
    for axis in (0, 1, 2):
        x = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, x)
    x = (x - x.min()) / (x.max() - x.min())
    return (x * 255).round().astype(np.uint8)


def mixed_clip(reference: np.ndarray, block: int = 6, seed: int = 1) -> np.ndarray:
    """A clip of the same size assembled from block x block tiles taken from random places."""
    rng = np.random.default_rng(seed)
    t, h, w, _ = reference.shape
    out = np.empty_like(reference)
    for y in range(0, h, block):
        for x in range(0, w, block):
            sy, sx = rng.integers(0, h - block + 1), rng.integers(0, w - block + 1)
            hh, ww = min(block, h - y), min(block, w - x)
            out[:, y:y + hh, x:x + ww] = reference[:, sy:sy + hh, sx:sx + ww]
    return out


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return textured_clip()


def test_copy_has_zero_distance_and_near_zero_diversity(clip):
    result = nearest_neighbour_field(clip, clip, FAST)
    assert result.nnfdist < 1e-6
    assert result.nnfdiv < 0.02
    assert result.nnfdiv_ceiling > 0.3  # random matches over the same reference do not compress


def test_exact_search_also_recovers_a_copy(clip):
    result = nearest_neighbour_field(clip, clip, PatchMatchOptions(iterations=5, search_dims=0))
    assert result.nnfdist < 1e-6


def test_translated_copy_has_near_zero_diversity(clip):
    shifted = clip[1:, 3:, 5:]  # every patch exists in the original, at a constant offset
    result = nearest_neighbour_field(shifted, clip, FAST)
    assert result.nnfdist < 1e-6
    assert result.nnfdiv < 0.03
    # Most of the field is the translation itself.
    share = np.mean(np.all(result.offsets == (1, 3, 5), axis=-1))
    assert share > 0.95


def test_noise_is_far_from_the_clip(clip):
    noise = np.random.default_rng(5).integers(0, 256, clip.shape, dtype=np.uint8)
    result = nearest_neighbour_field(noise, clip, FAST)
    assert result.nnfdist > 0.03  # uniform noise vs a smooth texture: far apart on [0, 1] pixels
    own = nearest_neighbour_field(clip, clip, FAST).nnfdist
    assert result.nnfdist > 1000 * max(own, 1e-7)


def test_mixed_patches_are_more_diverse_than_copies(clip):
    copy = nearest_neighbour_field(clip, clip, FAST)
    shifted = nearest_neighbour_field(clip[:, 2:, 2:], clip, FAST)
    mixed = nearest_neighbour_field(mixed_clip(clip), clip, FAST)
    assert mixed.nnfdiv > 3 * max(copy.nnfdiv, shifted.nnfdiv)
    # The tiles are real patches of the clip: only the seams between tiles are new.
    assert mixed.nnfdist < 0.01


def test_search_is_seeded_and_improves_with_iterations(clip):
    noisy = np.clip(clip.astype(int) + np.random.default_rng(2).integers(-20, 21, clip.shape),
                    0, 255).astype(np.uint8)
    a = nearest_neighbour_field(noisy, clip, PatchMatchOptions(iterations=2, seed=3))
    b = nearest_neighbour_field(noisy, clip, PatchMatchOptions(iterations=2, seed=3))
    np.testing.assert_array_equal(a.offsets, b.offsets)
    zero = nearest_neighbour_field(noisy, clip, PatchMatchOptions(iterations=0, seed=3))
    assert a.nnfdist < 0.5 * zero.nnfdist  # the search does something beyond the random init


def test_per_frame_distance_shape_and_mean(clip):
    result = nearest_neighbour_field(clip[:6], clip, FAST)
    per_frame = result.per_frame_distance()
    assert per_frame.shape == (4,)
    assert per_frame.mean() == pytest.approx(result.nnfdist, rel=1e-5, abs=1e-9)


def test_distance_is_the_patch_mse_on_unit_pixels():
    a = np.zeros((3, 3, 3, 3), np.uint8)
    b = np.full((3, 3, 3, 3), 51, np.uint8)  # 0.2 on [0, 1]
    result = nearest_neighbour_field(b, a, FAST)
    assert result.nnfdist == pytest.approx(0.04, rel=1e-5)
    assert patch_rows(a).shape == (1, 1, 1, 81)


def test_offset_encoding_is_planar_int16_little_endian():
    offsets = np.zeros((1, 1, 2, 3), np.int16)
    offsets[0, 0, 0] = (1, -2, 3)
    offsets[0, 0, 1] = (4, 5, -6)
    expected = np.array([1, 4, -2, 5, 3, -6], "<i2").tobytes()
    assert encode_offsets(offsets) == expected
    assert nnf_div(offsets) == len(zlib.compress(expected, 9)) / len(expected)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 8, 8, 3), np.uint8), "at least 3 frames"),
    (np.zeros((4, 8, 8, 3), np.float32), "uint8"),
    (np.zeros((4, 8, 8), np.uint8), "uint8"),
])
def test_bad_clips_are_refused(clip, bad, message):
    with pytest.raises(ValueError, match=message):
        nearest_neighbour_field(bad, clip, FAST)


def test_bad_options_are_refused(clip):
    with pytest.raises(ValueError, match="search_dims"):
        nearest_neighbour_field(clip, clip, PatchMatchOptions(search_dims=82))
