"""What `trainer sample` renders: frames from a bundle through sinfusion.sampling, no server.

Three modes, each one of the core's loops driven by `sampling.run` over a runtime:
  extrapolate: the clip's frame `start`, then `count` frames each k frames after (k < 0: before) it;
  generate:    a new clip of `count` frames, the first from noise (Projector), then Predictor steps;
  upsample:    the clip itself with factor-1 Interpolator frames between each pair of its frames.
The result starts with the given frame for extrapolation, so a viewer sees where it came from.
The image applications (`--project IMAGE`, `--summary`: still images, docs/applications.md) are
`still_input` and `render_projection` at the end.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

from sinfusion import sampling
from sinfusion.bundle import Bundle, BundleError
from sinfusion.frames import to_model, to_uint8

MODES = ("extrapolate", "generate", "upsample")
RUNTIMES = ("torch", "onnx")


@dataclass(frozen=True)
class RenderRequest:
    mode: str  # one of MODES
    count: int = 16  # frames to make (extrapolate, generate)
    factor: int = 2  # upsample factor: 2, 4 or 8
    start: int | None = None  # extrapolate: start frame (default: last frame for k > 0, else first)
    k: int = 1  # extrapolate / generate: frame step of each prediction
    seed: int = 0
    options: sampling.SamplingOptions = sampling.SamplingOptions()


def required_roles(mode: str) -> tuple[str, ...]:
    return {"extrapolate": ("predictor",), "generate": ("projector", "predictor"),
            "upsample": ("interpolator",)}[mode]


def make_denoiser(bundle: Bundle, runtime: str, device: str, roles: list[str]) -> sampling.Denoiser:
    """The runtime that executes the loop's steps for these roles."""
    if runtime == "torch":
        from sinfusion.runtimes.torch_runtime import TorchDenoiser

        return TorchDenoiser(bundle, device=device, roles=roles)
    if runtime == "onnx":
        if importlib.util.find_spec("sinfusion.runtimes.onnx_runtime") is None:
            raise BundleError("runtime onnx is not available in this install (no "
                              "sinfusion.runtimes.onnx_runtime); use --runtime torch")
        from sinfusion.runtimes import onnx_runtime

        return onnx_runtime.OnnxDenoiser(bundle, roles=roles)
    raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")


def check_request(bundle: Bundle, request: RenderRequest) -> None:
    """Refuse what the bundle cannot do, naming the option and the allowed range."""
    m = bundle.manifest
    if request.mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {request.mode!r}")
    missing = [r for r in required_roles(request.mode) if r not in m.roles]
    if missing:
        raise BundleError(f"{bundle.path}: {request.mode} needs a trained {' and '.join(missing)}; "
                          f"this bundle has {', '.join(m.roles) or 'no roles'}")
    if request.mode in ("extrapolate", "generate") and not 1 <= request.count <= 10_000:
        raise ValueError(f"frame count must be in [1, 10000], got {request.count}")
    if request.mode != "upsample":
        sampling.validate_k(request.k)
    else:
        sampling.validate_factor(request.factor)
    if request.start is not None and not 0 <= request.start < m.frame_count:
        raise ValueError(f"start must be in [0, {m.frame_count - 1}], got {request.start}")
    schedule_steps = min(int(e.schedule["steps"]) for e in m.roles.values())
    request.options.validate(schedule_steps)


def render(bundle: Bundle, request: RenderRequest,
           denoiser: sampling.Denoiser) -> tuple[np.ndarray, float]:
    """Run the request's loop; returns uint8 frames (N, H, W, 3) and their frame rate."""
    check_request(bundle, request)
    bundle_sampling = bundle.sampling()
    rng = np.random.default_rng(request.seed)
    m = bundle.manifest
    fps = m.fps
    first: list[np.ndarray] = []
    if request.mode == "extrapolate":
        clip = bundle.frames()
        start = request.start if request.start is not None else (len(clip) - 1 if request.k > 0 else 0)
        first = [clip[start]]
        loop = sampling.extrapolate(bundle_sampling, to_model(clip[start]), request.count, request.k, rng,
                                    request.options)
    elif request.mode == "generate":
        clip = bundle.frames() if m.mode == "video" else None  # a video's new clip starts from one
        loop = sampling.generate(bundle_sampling, (m.height, m.width), request.count, rng, request.options,
                                 k=request.k, clip=clip)
    else:
        clip = bundle.frames()
        loop = sampling.upsample(bundle_sampling, (to_model(f) for f in clip), request.factor, rng,
                                 request.options)
        fps = m.fps * request.factor
    made = [to_uint8(frame.image) for frame in sampling.run(loop, denoiser)]
    return np.stack(first + made), fps


# --- image applications (paper 6.2): `trainer sample --project IMAGE` and `--summary` ---------------

def still_input(bundle: Bundle, path: str | None, start: int | None) -> tuple[np.ndarray, str | None]:
    """The image to project: a file (first frame, resized to the model's size) or a clip frame.

    Returns uint8 (H, W, 3) at the model's size and a notice when the file had to be resized.
    """
    from sinfusion.io.files import VideoError, resize
    from sinfusion.video import read_clip

    m = bundle.manifest
    if not path:
        index = 0 if start is None else start
        if not 0 <= index < m.frame_count:
            raise ValueError(f"start must be in [0, {m.frame_count - 1}], got {index}")
        return bundle.frames()[index], None
    clip = read_clip(path, max_side=0)
    if len(clip.frames) != 1:
        raise VideoError(f"{path}: has {len(clip.frames)} frames; give one image")
    image = clip.frames[0]
    h, w = image.shape[:2]
    if (h, w) == (m.height, m.width):
        return image, None
    return resize(image, (m.width, m.height)), (f"{path} is {w}x{h}; the model's size is "
                                                 f"{m.width}x{m.height}: resized (Lanczos)")


def render_projection(bundle: Bundle, image: np.ndarray, strength: float,
                      options: sampling.SamplingOptions, seed: int, denoiser: sampling.Denoiser,
                      scales: list[float] | None = None, axes: str = "both") -> list[np.ndarray]:
    """Project `image` (uint8, the model's size), or summarise it when `scales` are given.

    Returns uint8 images: the projection's result, or one per scale.
    """
    if "projector" not in bundle.manifest.roles:
        raise BundleError(f"{bundle.path}: projection needs a trained projector; this bundle has "
                          f"{', '.join(bundle.manifest.roles) or 'no roles'}")
    bundle_sampling = bundle.sampling()
    rng = np.random.default_rng(seed)
    x = to_model(image)
    if scales is None:
        loop = sampling.project(bundle_sampling, x, strength, rng, options)
    else:
        loop = sampling.summarize(bundle_sampling, x, scales, strength, rng, options, axes)
    return [to_uint8(frame.image) for frame in sampling.run(loop, denoiser)]
