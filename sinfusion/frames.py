"""Conversions between the wire/disk layout of frames and the models' layout.

Disk, wire and clients: uint8 RGB, (H, W, 3) per frame. Models: float32 in [-1, 1], (3, H, W).
"""

from __future__ import annotations

import numpy as np


def to_model(frames: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1]."""
    if frames.dtype != np.uint8 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB frames (..., H, W, 3), got {frames.dtype} {frames.shape}")
    x = np.moveaxis(frames, -1, -3).astype(np.float32)
    return x / 127.5 - 1.0


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float32 (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3), rounding and clipping."""
    y = np.clip((np.asarray(x, dtype=np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(y, -3, -1))
