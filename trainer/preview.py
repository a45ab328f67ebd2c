"""Preview frames written now and then during training: previews/<role>_<step>.png.

A preview runs the real sampling loop (sinfusion.sampling) on the role's EMA network through the
PyTorch runtime, on full frames, with a fixed seed so previews of one run are comparable over time.
Each image is a row: inputs | model output | ground truth where one exists.
  predictor:    frame 0 | predicted frame 1 (k=1) | frame 1
  projector:    a frame generated from noise | frame 0
  interpolator: frame 0 | interpolated frame 1 | frame 2 | frame 1
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sinfusion import sampling
from sinfusion.frames import to_model, to_uint8
from sinfusion.io.files import write_image
from sinfusion.runtimes.torch_runtime import TorchDenoiser
from sinfusion.schedule import Schedule
from sinfusion.video import contact_sheet

PREVIEW_SEED = 1234


def render_preview(role: str, net: torch.nn.Module, schedule: Schedule, target: str,
                   frames: np.ndarray, device: torch.device, steps: int = 0) -> np.ndarray:
    """One preview row as uint8 (H, W', 3); steps > 0 samples with that many DDIM steps."""
    bundle_sampling = sampling.BundleSampling({role: sampling.RoleSampling(schedule, target)})
    denoiser = TorchDenoiser.from_networks({role: net}, device=str(device))
    rng = np.random.default_rng(PREVIEW_SEED)
    # The role alone (no Projector correction); DDIM when fewer steps are asked, to keep it cheap.
    options = sampling.SamplingOptions(steps=steps, method="ddim" if steps else "ddpm",
                                       correction_steps=0)
    clip = to_model(frames)
    n = len(frames)
    if role == "predictor":
        out = sampling.run_to_value(
            sampling.predict_frame(bundle_sampling, clip[0], 1, rng, options), denoiser)
        row = [frames[0], to_uint8(out), frames[min(1, n - 1)]]
    elif role == "interpolator":
        out = sampling.run_to_value(
            sampling.interpolate_frame(bundle_sampling, clip[0], clip[2], rng, options), denoiser)
        row = [frames[0], to_uint8(out), frames[2], frames[1]]
    else:
        shape = frames.shape[1:3]
        out = sampling.run_to_value(
            sampling.generate_frame(bundle_sampling, shape, rng, options), denoiser)
        row = [to_uint8(out), frames[0]]
    return contact_sheet(np.stack(row), columns=len(row))


def write_preview(bundle_dir: Path, role: str, net: torch.nn.Module, schedule: Schedule, target: str,
                  frames: np.ndarray, step: int, device: torch.device, steps: int = 0) -> Path:
    image = render_preview(role, net, schedule, target, frames, device, steps)
    return write_image(Path(bundle_dir) / "previews" / f"{role}_{step:07d}.png", image)
