"""A sample clip made by code, so the demo and the tests need no download.

The scene is built to look like what SinFusion is for (a static camera, moving texture-like content):
a sky whose soft clouds drift right, a sea whose waves roll left below the horizon, and a few bright
blobs that cross it in lanes, all over a fixed fine-grained texture. Every motion is a steady translation of a
few pixels per frame, so a Predictor can learn "frame n -> frame n+k" from a handful of frames, and the
texture gives the Projector a patch distribution to learn. Same seed, same clip, bit for bit.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SAMPLE_FPS = 12.0
BLOB_LANES = np.array([0.2, 0.7, 0.88])  # blob heights (fractions of the frame's): one in the sky, two at sea
BLOB_PALETTE = np.array([[240.0, 90.0, 190.0], [140.0, 250.0, 110.0], [250.0, 200.0, 60.0]])  # pink, green, gold


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Tileable low-frequency noise in [0, 1]: a random Fourier series with `cells` lowest frequencies.

    Tileable horizontally so that clouds can drift forever without a seam.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.zeros((height, width))
    for fy in range(cells):
        for fx in range(1, cells + 1):
            amp = 1.0 / (fx + fy)
            phase = rng.uniform(0, 2 * np.pi)
            out += amp * np.cos(2 * np.pi * (fx * xx / width + fy * yy / (2 * height)) + phase)
    out -= out.min()
    return out / max(out.max(), 1e-9)


def make_sample_clip(frames: int = 48, height: int = 64, width: int = 96, seed: int = 0) -> np.ndarray:
    """The sample clip: uint8 RGB (frames, height, width, 3), deterministic in `seed`."""
    if frames < 1 or height < 8 or width < 8:
        raise ValueError(f"sample clip needs frames >= 1 and a size of at least 8x8, "
                         f"got {frames} frames of {width}x{height}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    horizon = int(height * 0.55)
    sky = yy < horizon

    # Fixed fine texture (grain) that every frame shares: gives the models patches to learn.
    grain = rng.normal(0.0, 6.0, size=(height, width, 1))
    clouds = _smooth_noise(rng, height, width * 2, cells=4)  # twice as wide: drifts without repeating
    # One lane each, so no two blobs ever cross (see BLOB_PALETTE for why); two at sea, where the
    # waves under a blob look alike everywhere: a blob crossing the sky's white clouds meets
    # backgrounds the training frames never showed it on, and a 3-minute Predictor dissolves it.
    blob_y = (BLOB_LANES[rng.permutation(3)] + rng.uniform(-0.03, 0.03, size=3)) * height
    blob_x = rng.uniform(0, width, size=3)
    blob_speed = rng.choice([-1.5, 1.0, 2.0], size=3, replace=False)
    # Three hues far apart: a small Predictor tells a blob's motion by its look, and two look-alike
    # blobs moving opposite ways teach it their average (measured: a pink blob stood still), as
    # two blobs crossing each other smear into one.
    blob_color = BLOB_PALETTE[rng.permutation(3)]

    out = np.empty((frames, height, width, 3), np.uint8)
    for n in range(frames):
        # Sky: blue gradient, clouds drifting right at 1 px/frame.
        shift = n % (2 * width)
        c = np.roll(clouds, shift, axis=1)[:, :width]
        c = np.clip((c - 0.45) * 2.5, 0, 1)[..., None]
        sky_rgb = np.stack([70 + 40 * yy / horizon, 110 + 50 * yy / horizon,
                            200 + 30 * yy / horizon], axis=-1)
        sky_rgb = sky_rgb * (1 - c) + 235 * c
        # Sea: waves rolling left at 2 px/frame, their wavelength shrinking towards the horizon.
        depth = np.maximum(yy - horizon, 0) + 1
        phase = 2 * np.pi * (xx + 2.0 * n) / (10 + depth) + depth * 0.9
        wave = 0.5 + 0.5 * np.sin(phase)[..., None]
        sea_rgb = np.stack([20 + 0 * yy, 70 + 0.8 * depth, 110 + 1.2 * depth], axis=-1) + 45 * wave
        img = np.where(sky[..., None], sky_rgb, sea_rgb)
        # Blobs: soft bright discs crossing the frame, each at a steady speed in its lane.
        for b in range(3):
            cx = (blob_x[b] + blob_speed[b] * n) % width
            cy = blob_y[b]
            dx = np.minimum(np.abs(xx - cx), width - np.abs(xx - cx))  # wrap around the edges
            w = np.exp(-(dx ** 2 + (yy - cy) ** 2) / (2 * (height / 16) ** 2))[..., None]
            img = img * (1 - w) + blob_color[b] * w
        out[n] = np.clip(img + grain, 0, 255).astype(np.uint8)
    return out


def write_sample_clip(path: str | os.PathLike, frames: int = 48, height: int = 64, width: int = 96,
                      seed: int = 0, fps: float = SAMPLE_FPS) -> Path:
    """Write the sample clip as a video (H.264 for .mp4; any suffix sinfusion.io.files.write_video takes)."""
    from .io.files import write_video

    return write_video(path, make_sample_clip(frames, height, width, seed), fps)
