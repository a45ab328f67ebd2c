"""Request validation: proto messages -> checked plain values, or a RequestError naming the field.

Kept apart from the servicer so the rules read in one place. Every message says the field, the allowed
range and what was sent, e.g. "frames must be in [1, 1000], got 0". Strings a client sent are echoed
cut short (served.short): status details travel in HTTP/2 headers, and logs must not grow with them.
The request size limit is checked before parsing (server.wire).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np

from sinfusion.frames import to_model
from sinfusion.io.files import resize as resize_lanczos
from sinfusion.sampling import (DEFAULT_STRENGTH, SamplingOptions, default_method, default_steps,
                                loop_correction, summary_sizes)
from sinfusion.v1 import sinfusion_pb2 as pb

from .served import MAX_STEP, RefusedBundle, ServedModel, short

METHODS = {pb.SAMPLING_METHOD_DDPM: "ddpm",
           pb.SAMPLING_METHOD_DDIM: "ddim"}
RESIZE_POLICIES = (pb.RESIZE_POLICY_UNSPECIFIED, pb.RESIZE_POLICY_RESIZE, pb.RESIZE_POLICY_REFUSE)
FACTORS = (2, 4, 8)
MAX_NAME_CHARS = 256  # longer model names are refused as such, not looked up
LISTED_NAMES = 20  # served models named in a NOT_FOUND message


class RequestError(Exception):
    """A request the server refuses: a gRPC status code and a one-line message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _names(models: dict[str, ServedModel]) -> str:
    names = sorted(models)
    listed = ", ".join(n if len(n) <= 40 else f"{n[:40]}..." for n in names[:LISTED_NAMES])
    more = len(names) - LISTED_NAMES
    return listed + (f" and {more} more (ListModels lists them)" if more > 0 else "")


def find_model(models: dict[str, ServedModel], name: str,
               refused: list[RefusedBundle] = ()) -> ServedModel:
    if not name:
        raise invalid(f"model must name a served model ({_names(models)})")
    model = models.get(name)
    if model is not None:
        return model
    if len(name) > MAX_NAME_CHARS:
        raise invalid(f"model must be at most {MAX_NAME_CHARS} characters, got {len(name)}")
    bad = next((r for r in refused if r.name == name), None)
    if bad is not None:  # the operator's problem, not a typo: say why it is not served
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"model {short(name)} is not served: its bundle was refused at startup "
                           f"({bad.public_reason}); served models: {_names(models)}")
    raise RequestError(grpc.StatusCode.NOT_FOUND,
                       f"model {short(name)} not found; served models: {_names(models)}")


def require(model: ServedModel, capability: str, roles: str) -> None:
    if capability not in model.capabilities:
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"model {short(model.name)} cannot {capability}: it needs {roles} "
                           f"(has: {', '.join(model.roles) or 'none'})")


def frame_count(frames: int, max_frames: int) -> int:
    if not 1 <= frames <= max_frames:
        raise invalid(f"frames must be in [1, {max_frames}], got {frames}")
    return frames


def frame_step(step: int) -> int:
    k = step or 1
    if abs(k) > MAX_STEP:
        raise invalid(f"step must be in [-{MAX_STEP}, {MAX_STEP}] (0 means 1), got {step}")
    return k


def start_frame(index: int, model: ServedModel) -> np.ndarray:
    count = len(model.clip)
    if not 0 <= index < count:
        raise invalid(f"start_frame must be in [0, {count - 1}], got {index}")
    return to_model(model.clip[index])


def upsample_factor(factor: int) -> int:
    if factor not in FACTORS:
        raise invalid(f"factor must be 2, 4 or 8, got {factor}")
    return factor


def resize_policy(policy: int, field: str = "resize") -> int:
    if policy not in RESIZE_POLICIES:
        raise invalid(f"{field} must be RESIZE_POLICY_RESIZE (1) or RESIZE_POLICY_REFUSE (2), got {policy}")
    return policy


def client_frame(raw: pb.RawFrame, model: ServedModel, policy: int,
                 field: str) -> tuple[np.ndarray, bool]:
    """A client's RGB24 frame -> (uint8 (H, W, 3) at the model's size, resized?)."""
    w, h = raw.width, raw.height
    if w < 1 or h < 1:
        raise invalid(f"{field}.width and {field}.height must be >= 1, got {w}x{h}")
    expected = w * h * 3
    rgb = raw.rgb  # each read of a bytes field copies it: read once
    if len(rgb) != expected:
        raise invalid(f"{field}.rgb must be width*height*3 = {expected} bytes for {w}x{h}, "
                      f"got {len(rgb)}")
    image = np.frombuffer(rgb, np.uint8).reshape(h, w, 3)
    mh, mw = model.size
    if (h, w) == (mh, mw):
        return image, False
    if policy == pb.RESIZE_POLICY_REFUSE:
        raise invalid(f"{field} is {w}x{h} but model {short(model.name)} takes {mw}x{mh} "
                      f"(resize policy RESIZE_POLICY_REFUSE)")
    return resize_lanczos(image, (mw, mh)), True


# --- Project and Summarize (the image applications) ----------------------------------------------

SUMMARY_AXES = {pb.SUMMARY_AXES_UNSPECIFIED: "both", pb.SUMMARY_AXES_BOTH: "both",
                pb.SUMMARY_AXES_WIDTH: "width", pb.SUMMARY_AXES_HEIGHT: "height"}


def require_projector(model: ServedModel, rpc: str) -> None:
    if "projector" not in model.sampling.roles:
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"model {short(model.name)} cannot {rpc}: it needs a Projector "
                           f"(has: {', '.join(model.roles) or 'none'})")


def required_image(request, model: ServedModel, field: str = "image") -> tuple[np.ndarray, bool]:
    """The request's `image` RawFrame at the model's size (its resize policy applied), resized?"""
    if not request.HasField(field):
        raise invalid(f"{field} must be set: the RGB24 image to work on")
    return client_frame(getattr(request, field), model, resize_policy(request.resize), field)


def strength(request) -> float:
    """ProjectRequest/SummarizeRequest.strength: unset = the default; else finite in [0, 1]."""
    if not request.HasField("strength"):
        return DEFAULT_STRENGTH
    value = request.strength
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise invalid(f"strength must be in [0, 1] (unset = {DEFAULT_STRENGTH}), got {value}")
    return value


def summary_axes(axes: int) -> str:
    if axes not in SUMMARY_AXES:
        raise invalid(f"axes must be SUMMARY_AXES_BOTH (1), SUMMARY_AXES_WIDTH (2) or "
                      f"SUMMARY_AXES_HEIGHT (3), got {axes}")
    return SUMMARY_AXES[axes]


def summary_plan(scales, model: ServedModel, axes: str, max_frames: int) -> list[tuple[int, int]]:
    """Checked scales -> the (height, width) of every summary step, engines at each size included."""
    if not 1 <= len(scales) <= max_frames:  # counted before any scale is read
        raise invalid(f"scales must hold between 1 and {max_frames} scales (one frame each), "
                      f"got {len(scales)}")
    try:
        sizes = summary_sizes(model.size, list(scales), axes)
    except ValueError as exc:
        raise invalid(str(exc)) from None
    engine_sizes(model, "projector", sizes)
    return sizes


def engine_sizes(model: ServedModel, role: str, sizes: list[tuple[int, int]]) -> None:
    """Refuse sizes a fixed-shape runtime has no engine for (PyTorch takes any size)."""
    denoiser = model.runtime.denoiser
    engines = getattr(denoiser, "engines", None)  # FixedShapeDenoiser: (role, h, w) -> engines
    if engines is None:
        return
    have = {(h, w) for r, h, w in engines if r == role}
    missing = sorted({s for s in sizes if s not in have}, key=lambda s: (-s[0] * s[1], s))
    if not missing:
        return
    listed = ", ".join(f"{w}x{h}" for h, w in missing[:5]) + (
        f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                       f"model {short(model.name)} runs on {model.runtime.name}, whose {role} engines "
                       f"have fixed sizes ({', '.join(f'{w}x{h}' for h, w in sorted(have)) or 'none'});"
                       f" this summary needs {listed}: export engines at those sizes "
                       f"(sinfusion-export --roles {role} --size WxH) or serve the model on a torch "
                       f"runtime")


@dataclass
class Sampling:
    """Checked SamplingParams: the loop options and the stream's seed (drawn when unset)."""

    options: SamplingOptions
    seed: int

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


def sampling(params: pb.SamplingParams, model: ServedModel, roles: tuple[str, ...],
             loop: str = "extrapolate") -> Sampling:
    """Check steps against the schedules of `roles` and correction against the Projector's; unset
    fields get the defaults of `loop` (sinfusion.sampling.default_method)."""
    unset = params.method == pb.SAMPLING_METHOD_UNSPECIFIED
    method = default_method(loop) if unset else METHODS.get(params.method)
    if method is None:
        raise invalid(f"sampling.method must be SAMPLING_METHOD_DDPM (1) or SAMPLING_METHOD_DDIM (2), "
                      f"got {params.method}")
    bound = min(model.steps_bound(r) for r in roles)
    if not params.HasField("steps"):
        steps = min(default_steps(method), bound)
    elif params.steps > bound:
        raise invalid(f"sampling.steps must be in [0, {bound}] (0 = all), got {params.steps}")
    else:
        steps = params.steps
    manifest = model.bundle.manifest
    corr_bound = model.steps_bound("projector") if "projector" in model.sampling.roles else bound
    if params.HasField("correction_steps"):
        correction = params.correction_steps
        if correction > corr_bound:
            raise invalid(f"sampling.correction_steps must be in [0, {corr_bound}] (0 = off), "
                          f"got {correction}")
    else:
        correction = min(loop_correction(loop, manifest.correction_steps), corr_bound)
    if params.HasField("seed"):
        seed = params.seed
    else:  # a fresh seed, logged with the stream so that a run can be repeated
        seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
    return Sampling(SamplingOptions(steps, method, correction), seed)
