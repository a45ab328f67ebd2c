"""Training batches drawn on the training device: crops, frame pairs and frame triplets.

The clip lives on the device once, as uint8 (N, 3, H, W): a long clip costs its bytes and nothing
more, and a batch costs B crops whatever N is. Every draw (frame indices, crop offsets, k) comes from
one torch.Generator, so a run is reproducible and its state can be checkpointed. A batch is one
advanced-indexing gather: no per-sample Python transforms, no DataLoader.

All frames of one sample (conditioning and target) share the same crop window, because the Predictor
and Interpolator learn motion between aligned pixels. With `hflip`, half the samples are mirrored
left-right, every frame of a sample alike: a mirrored clip is a physically plausible clip (motion
mirrors with the appearance), so the model sees twice the distinct examples and memorises less.
But a mirrored clip moves the other way, and where the appearance does not say which way (a round
blob, a wave, a swirl) the Predictor learns both directions at once and blurs them together. With
`label_mirrors`, a mirrored Predictor sample's frame step is k + MIRRORED_K: the network learns the
mirrored clip as a second task sharing its features, and is served the real k, the unmirrored one.
"""

from __future__ import annotations

import numpy as np
import torch

# Frame-step code offset of a mirrored Predictor sample: far from every served k (|k| <= 3), so the
# sinusoidal embedding keeps the two clips apart.
MIRRORED_K = 64


def crop_size(height: int, width: int, fraction: float) -> tuple[int, int]:
    """Crop (h, w) of about `fraction` of each side, at least 8 px and at most the frame."""
    h = min(height, max(8, int(round(height * fraction))))
    w = min(width, max(8, int(round(width * fraction))))
    return h, w


def k_limit(done: float, k_max: int = 3, ramp: float = 0.5) -> int:
    """Largest |k| the Predictor sees when `done` (in [0, 1]) of its run is over (paper section 5's
    curriculum).

    |k| = 1 at the start, growing by one at evenly spaced points until k_max is reached after
    `ramp` of the run; ramp = 0 starts at k_max. A time-budgeted run passes the larger of its step
    and time fractions (RoleRun.fraction), so it too reaches k_max, however large its step cap.
    """
    if k_max <= 1 or ramp <= 0:
        return max(1, k_max)
    return int(min(k_max, 1 + int(done / ramp * k_max)))


class ClipCrops:
    """Random aligned crops of 1, 2 or 3 frames of a clip held on the device as uint8."""

    def __init__(self, frames: np.ndarray, crop_fraction: float, device: torch.device | str,
                 generator: torch.Generator, hflip: bool = False,
                 label_mirrors: bool = False) -> None:
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
        self.device = torch.device(device)
        # (N, 3, H, W) uint8; contiguous so the gather reads rows.
        self.frames = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        self.frames = self.frames.permute(0, 3, 1, 2).contiguous()
        self.count, _, self.height, self.width = self.frames.shape
        self.crop = crop_size(self.height, self.width, crop_fraction)
        self.generator = generator
        self.hflip = hflip
        self.label_mirrors = label_mirrors

    # --- random draws ---------------------------------------------------------------------------

    def _randint(self, high: torch.Tensor | int, size: int) -> torch.Tensor:
        """Uniform integers in [0, high) per element (high may differ per element)."""
        u = torch.rand(size, generator=self.generator, device=self.device)
        return torch.clamp((u * high).long(), max=torch.as_tensor(high, device=self.device) - 1)

    def _offsets(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        ch, cw = self.crop
        return (self._randint(self.height - ch + 1, batch), self._randint(self.width - cw + 1, batch))

    def sample_k(self, batch: int, limit: int) -> torch.Tensor:
        """Frame steps uniform over {-limit..-1, 1..limit}, limited by the clip length."""
        limit = max(1, min(limit, self.count - 1))
        mag = 1 + self._randint(limit, batch)
        sign = torch.where(self._randint(2, batch) == 0, -1, 1)
        return mag * sign

    # --- gathering -----------------------------------------------------------------------------

    def _mirrors(self, batch: int) -> torch.Tensor | None:
        """Which samples are mirrored left-right (hflip), the same for all frames of a sample."""
        return self._randint(2, batch) == 1 if self.hflip else None

    def gather(self, indices: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
               mirror: torch.Tensor | None = None) -> torch.Tensor:
        """Crops of frames[indices] at (top, left), mirrored where `mirror`: (B, 3, h, w) in [-1, 1]."""
        ch, cw = self.crop
        rows = top[:, None] + torch.arange(ch, device=self.device)  # (B, h)
        cols = left[:, None] + torch.arange(cw, device=self.device)  # (B, w)
        if mirror is not None:  # read the columns right to left: a mirrored crop, same window
            cols = torch.where(mirror[:, None], cols.flip(1), cols)
        chans = torch.arange(3, device=self.device)
        crops = self.frames[indices[:, None, None, None], chans[None, :, None, None],
                            rows[:, None, :, None], cols[:, None, None, :]]
        return crops.float() / 127.5 - 1.0

    def single(self, batch: int) -> torch.Tensor:
        """Projector batch: crops of frames drawn from the whole clip, (B, 3, h, w)."""
        top, left = self._offsets(batch)
        return self.gather(self._randint(self.count, batch), top, left, self._mirrors(batch))

    def pair(self, batch: int, k_max: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predictor batch: (frame n, frame n+k, k) with the same crop; k in +-[1, k_max], or
        k + MIRRORED_K for a mirrored sample with `label_mirrors`."""
        if self.count < 2:
            raise ValueError("the Predictor needs a clip of at least 2 frames")
        k = self.sample_k(batch, k_max)
        # n uniform over the frames whose n+k exists: [max(0, -k), N - max(0, k)).
        low = torch.clamp(-k, min=0)
        n = low + self._randint(self.count - k.abs(), batch)
        top, left = self._offsets(batch)
        mirror = self._mirrors(batch)
        code = k
        if mirror is not None and self.label_mirrors:
            code = torch.where(mirror, k + MIRRORED_K, k)
        return self.gather(n, top, left, mirror), self.gather(n + k, top, left, mirror), code

    def triplet(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Interpolator batch: (frame n, frame n+2, frame n+1) with the same crop."""
        if self.count < 3:
            raise ValueError("the Interpolator needs a clip of at least 3 frames")
        n = self._randint(self.count - 2, batch)
        top, left = self._offsets(batch)
        m = self._mirrors(batch)
        return (self.gather(n, top, left, m), self.gather(n + 2, top, left, m),
                self.gather(n + 1, top, left, m))
