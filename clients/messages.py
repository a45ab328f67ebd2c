"""Plain Python values for the wire messages, and the conversions both clients share.

Frames travel as RGB24 bytes (see the .proto); here they are numpy uint8 arrays (H, W, 3).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from sinfusion.io.cli import PAPER_SAMPLER
from sinfusion.v1 import sinfusion_pb2 as pb

from .errors import ClientError

METHODS = {"ddpm": pb.SAMPLING_METHOD_DDPM, "ddim": pb.SAMPLING_METHOD_DDIM}
RESIZE = {"resize": pb.RESIZE_POLICY_RESIZE, "refuse": pb.RESIZE_POLICY_REFUSE}
AXES = {"both": pb.SUMMARY_AXES_BOTH, "width": pb.SUMMARY_AXES_WIDTH, "height": pb.SUMMARY_AXES_HEIGHT}


@dataclass(frozen=True)
class Frame:
    """A frame from the server. `image` is a read-only uint8 (H, W, 3) view of the message bytes."""

    index: int  # position in this response stream, from 0
    image: np.ndarray
    synthesized: bool  # made by the model (False: an original frame passed through by upsample)
    resized: bool  # derived from a client frame that was resized to the model's size
    noise_level: int = 0  # project(intermediate_steps=True): this image's noise level; 0 = the result

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True)
class NextFrameQuality:
    """The trainer's held-out next-frame score against copying the frame (NextFrameQuality)."""

    model_psnr: float
    copy_psnr: float
    pairs: int
    pairs_won: int
    predictor_steps: int
    predictor_seconds: float
    verdict: str

    @property
    def gain_db(self) -> float:
        return self.model_psnr - self.copy_psnr


@dataclass(frozen=True)
class ModelInfo:
    """A served model (ModelInfo in the .proto, field for field)."""

    name: str
    width: int
    height: int
    fps: float
    frame_count: int
    capabilities: tuple[str, ...]
    runtime: str
    roles: tuple[str, ...]
    schedule_steps: int
    default_correction_steps: int
    batch_sizes: tuple[int, ...]
    mode: str
    max_step: int
    quality: NextFrameQuality | None = None  # None: trained without held-out frames
    correction_weight: float = 1.0  # share of the Projector's change a correction keeps
    correction_passes: int = 1  # corrections of each frame
    predictor_margin: int = 0  # px of mirrored frame the Predictor works with
    coarse_correction_level: int = 0  # a coarse correction's level before those at T_corr (0: none)
    coarse_correction_weight: float = 1.0  # share of its change a frame keeps
    layout_pull: float = 0.0  # share of the way a stream's frame moves to its first frame's layout
    layout_sigma: float = 0.0  # px of blur that makes a frame's layout
    layout_motion: float = 0.0  # the clip's layout spread where nothing is held (0: held everywhere)
    layout_window: int = 0  # px matched to the first and clip frames' layouts (0: the first's alone)

    @classmethod
    def from_proto(cls, m: pb.ModelInfo) -> ModelInfo:
        q = m.quality
        quality = NextFrameQuality(q.model_psnr, q.copy_psnr, q.pairs, q.pairs_won,
                                   q.predictor_steps, q.predictor_seconds, q.verdict)
        return cls(m.name, m.width, m.height, m.fps, m.frame_count, tuple(m.capabilities), m.runtime,
                   tuple(m.roles), m.schedule_steps, m.default_correction_steps, tuple(m.batch_sizes),
                   m.mode, m.max_step, quality if m.HasField("quality") else None,
                   m.correction_weight or 1.0, m.correction_passes or 1, m.predictor_margin,
                   m.coarse_correction_level, m.coarse_correction_weight or 1.0, m.layout_pull,
                   m.layout_sigma, m.layout_motion, m.layout_window)


@dataclass(frozen=True)
class Sampling:
    """How frames are sampled; what is left None is the server's default.

    steps: denoising steps per frame, 0 = all of the model's schedule_steps; None = the server's
        default for the method (DDIM: 4; DDPM: all).
    method: "ddpm" (ancestral, the paper) or "ddim" (deterministic, fewer steps); None = the server's
        default, DDIM.
    correction_steps: Projector correction level T_corr; None = the model's default, 0 = off.
    seed: the stream's random seed; None = random. Same seed and parameters, same frames.
    `Sampling.paper()` is the paper's sampler: DDPM over every step, T_corr 3.
    """

    steps: int | None = None
    method: str | None = None
    correction_steps: int | None = None
    seed: int | None = None

    @classmethod
    def paper(cls, seed: int | None = None) -> Sampling:
        return cls(**PAPER_SAMPLER, seed=seed)

    def to_proto(self) -> pb.SamplingParams:
        msg = pb.SamplingParams()
        if self.method is not None:
            if self.method not in METHODS:
                raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
            msg.method = METHODS[self.method]
        for name in ("steps", "correction_steps", "seed"):
            if getattr(self, name) is not None:
                setattr(msg, name, getattr(self, name))
        return msg


def raw_frame(image: np.ndarray) -> pb.RawFrame:
    """uint8 (H, W, 3) RGB -> RawFrame; checked here so a bad array never reaches the wire."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"a frame must be a uint8 (H, W, 3) RGB array, got {image.dtype} {image.shape}")
    return pb.RawFrame(width=image.shape[1], height=image.shape[0],
                       rgb=np.ascontiguousarray(image).tobytes())


def frame_from_proto(msg: pb.Frame) -> Frame:
    expected = msg.width * msg.height * 3
    if not msg.width or not msg.height or len(msg.rgb) != expected:
        raise ClientError(None, f"server sent frame {msg.index} of {msg.width}x{msg.height} with "
                                f"{len(msg.rgb)} bytes, expected {expected}")
    image = np.frombuffer(msg.rgb, np.uint8).reshape(msg.height, msg.width, 3)
    return Frame(msg.index, image, msg.synthesized, msg.resized, msg.noise_level)


def _resize(policy: str) -> int:
    if policy not in RESIZE:
        raise ValueError(f"resize must be one of {', '.join(RESIZE)}, got {policy!r}")
    return RESIZE[policy]


def extrapolate_request(model: str, frames: int, *, step: int = 1, start_frame: int | None = None,
                        start_image: np.ndarray | None = None, resize: str = "resize",
                        sampling: Sampling | None = None) -> pb.ExtrapolateRequest:
    if start_frame is not None and start_image is not None:
        raise ValueError("give start_frame or start_image, not both")
    req = pb.ExtrapolateRequest(model=model, frames=frames, step=step, resize=_resize(resize),
                                sampling=(sampling or Sampling()).to_proto())
    if start_image is not None:
        req.start_image.CopyFrom(raw_frame(start_image))
    else:
        req.start_frame = start_frame or 0
    return req


def generate_request(model: str, frames: int, sampling: Sampling | None = None) -> pb.GenerateRequest:
    return pb.GenerateRequest(model=model, frames=frames, sampling=(sampling or Sampling()).to_proto())


def upsample_first(model: str, factor: int, resize: str = "resize",
                   sampling: Sampling | None = None) -> pb.UpsampleRequest:
    """The first Upsample message: what to do, no frame yet."""
    return pb.UpsampleRequest(model=model, factor=factor, resize=_resize(resize),
                              sampling=(sampling or Sampling()).to_proto())


def upsample_requests(first: pb.UpsampleRequest,
                      frames: Iterable[np.ndarray]) -> Iterator[pb.UpsampleRequest]:
    """The first message, then one message per input frame, converted lazily as frames arrive."""
    yield first
    for image in frames:
        yield pb.UpsampleRequest(frame=raw_frame(image))


def project_request(model: str, image: np.ndarray, strength: float | None = None, *,
                    resize: str = "resize", sampling: Sampling | None = None,
                    intermediate_steps: bool = False) -> pb.ProjectRequest:
    req = pb.ProjectRequest(model=model, image=raw_frame(image), resize=_resize(resize),
                            sampling=(sampling or Sampling()).to_proto(),
                            intermediate_steps=intermediate_steps)
    if strength is not None:
        req.strength = strength
    return req


def summarize_request(model: str, image: np.ndarray, scales: Iterable[float], *,
                      strength: float | None = None, axes: str = "both", resize: str = "resize",
                      sampling: Sampling | None = None) -> pb.SummarizeRequest:
    if axes not in AXES:
        raise ValueError(f"axes must be one of {', '.join(AXES)}, got {axes!r}")
    req = pb.SummarizeRequest(model=model, image=raw_frame(image), scales=list(scales),
                              axes=AXES[axes], resize=_resize(resize),
                              sampling=(sampling or Sampling()).to_proto())
    if strength is not None:
        req.strength = strength
    return req
