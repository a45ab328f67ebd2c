"""The SinFusion backbone (paper section 4, figure 3) and the one-step diffusion update.

A chain of ConvNeXt blocks at full resolution: no down/upsampling and no attention, so the receptive
field grows only with depth (about 6 px per block with 7x7 depthwise kernels). The first half of the
chain feeds additive skip connections into the mirrored second half (first-to-last), like a UNet
without the resolution changes. The noise level t, and for the Predictor the frame step k, are embedded
with sinusoids, concatenated (paper section 5) and injected into every block. An anchored network
(NetworkConfig.anchored) adds the mean of its conditioning frames to its output: it predicts the change.

`DiffusionStep` wraps a network into one diffusion step, x_t -> x_{t-1}, with the per-step coefficients
and the noise as inputs. It is what the PyTorch runtime runs and what export traces to ONNX, so every
runtime executes the same arithmetic.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .config import NetworkConfig


def sinusoidal_embedding(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style sin/cos features of a (B,) float tensor -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=values.device, dtype=torch.float32) / half
    )
    angles = values.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at each pixel (ConvNeXt's norm): keeps every statistic local.

    Written as layer_norm over a channels-last view so that ONNX export emits one fused
    LayerNormalization op: ONNX Runtime runs the paper's network about 20% faster than with the
    equivalent mean/variance arithmetic over the strided channel axis (docs/benchmarks.md).
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise kxk conv, + embedding, norm, 1x1 expand, GELU, 1x1 project, residual."""

    def __init__(self, channels: int, expansion: int, kernel_size: int, cond_dim: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels
        )
        self.embed = nn.Linear(cond_dim, channels)
        self.norm = ChannelLayerNorm(channels)
        self.expand = nn.Conv2d(channels, channels * expansion, 1)
        self.project = nn.Conv2d(channels * expansion, channels, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.depthwise(x) + self.embed(cond)[:, :, None, None]
        h = self.project(F.gelu(self.expand(self.norm(h))))
        return x + h


class SinFusionNet(nn.Module):
    """The backbone: (noisy frame [+ conditioning frames], t [, k]) -> 3-channel prediction."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        embed_in = config.embed_dim * (2 if config.use_k else 1)
        cond_dim = 4 * c
        self.embedding = nn.Sequential(
            nn.Linear(embed_in, cond_dim), nn.GELU(), nn.Linear(cond_dim, cond_dim)
        )
        self.stem = nn.Conv2d(config.in_channels, c, 3, padding=1)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(c, config.expansion, config.kernel_size, cond_dim)
            for _ in range(config.blocks)
        )
        self.head_norm = ChannelLayerNorm(c)
        self.head = nn.Conv2d(c, 3, 3, padding=1)
        if config.anchored:  # start at the anchor exactly (copy / blend baseline), learn the change
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, k: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, cond_channels + 3, H, W), conditioning first; t, k: (B,) floats."""
        emb = sinusoidal_embedding(t, self.config.embed_dim)
        if self.config.use_k:
            if k is None:
                raise ValueError("this network embeds the frame step k; pass k")
            emb = torch.cat([emb, sinusoidal_embedding(k, self.config.embed_dim)], dim=1)
        # Sinusoids are computed in float32 (angles up to T rad lose their phase in fp16) and cast to
        # the weights' dtype, so a half-precision copy of the net (fp16 engine export) also traces.
        cond = self.embedding(emb.to(self.stem.weight.dtype))
        h = self.stem(x)
        half = len(self.blocks) // 2
        skips = []
        for i, block in enumerate(self.blocks):
            if i >= half:  # mirrored skip: block i receives the output of block (n - 1 - i)
                h = h + skips.pop()
            h = block(h, cond)
            if i < half:
                skips.append(h)
        out = self.head(F.gelu(self.head_norm(h)))
        if self.config.anchored:
            cc = self.config.cond_channels
            frames = x[:, :cc].unflatten(1, (cc // 3, 3))  # (B, frames, 3, H, W)
            # The change keeps each channel's mean: the network moves content, it does not change
            # the exposure. A small bias would otherwise add up frame after frame in an
            # extrapolation (measured: tornado washed out to white within 100 frames).
            anchor = frames.mean(dim=1).to(out.dtype)
            out = anchor + out - out.mean(dim=(2, 3), keepdim=True)
            if cc == 3:  # the Predictor also keeps its frame's contrast (a blend has less: not there)
                mean = anchor.mean(dim=(2, 3), keepdim=True)
                scale = anchor.std(dim=(2, 3), keepdim=True) / (out.std(dim=(2, 3), keepdim=True) + 1e-6)
                out = mean + (out - mean) * scale
        return out


# Layout of the per-sample coefficient vector `coef` of one diffusion step (see DiffusionStep).
COEF_NAMES = ("p", "q", "a", "b", "c")


class DiffusionStep(nn.Module):
    """One diffusion step as a single function of arrays, shared by every runtime.

    Inputs (batch B): x (B,3,H,W) the current noisy frame x_t; cond (B,Cc,H,W) conditioning frames
    (absent for the Projector); t (B,) noise level; k (B,) frame step (Predictor only); coef (B,5);
    noise (B,3,H,W). With coef = (p, q, a, b, c) per sample:

        x0_hat = clamp(p * x + q * net(...), -1, 1)      (p=0, q=1 for x0 targets; eps -> x0 otherwise)
        x_next = a * x0_hat + b * x + c * noise           (DDPM posterior, DDIM, or x0_hat itself)

    The sampling loop (sinfusion.sampling) computes the coefficients; the runtimes only run this.
    """

    def __init__(self, net: SinFusionNet) -> None:
        super().__init__()
        self.net = net

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None,
        t: torch.Tensor,
        k: torch.Tensor | None,
        coef: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        inp = x if cond is None else torch.cat([cond, x], dim=1)
        # A half-precision net (fp16 engines) runs in its own dtype; the update below stays in x's
        # dtype, because p and q reach 1/sqrt(abar_T) at the noisiest step and overflow in fp16.
        out = self.net(inp.to(self.net.stem.weight.dtype), t, k).to(x.dtype)
        c = coef[:, :, None, None]
        x0 = torch.clamp(c[:, 0:1] * x + c[:, 1:2] * out, -1.0, 1.0)
        return c[:, 2:3] * x0 + c[:, 3:4] * x + c[:, 4:5] * noise
