"""The per-clip model bundle on disk: manifest schema, atomic save, validated load.

Layout of a bundle folder::

    manifest.json                 what the bundle is (schema below); written last, atomically
    frames.safetensors            "frames": uint8 (N, H, W, 3), the clip at model resolution
    weights/<role>.safetensors    the EMA weights that serving uses, one file per trained role
    engines/                      exported engines (ONNX, TensorRT plans), listed in manifest "engines"
    previews/                     frames rendered during training
    training/<role>.safetensors   resume state kept apart from serving: raw weights, optimizer moments
    training/<role>.json          step counter, RNG state and settings of the interrupted run

Nothing here unpickles: tensors are safetensors, everything else is JSON. The module imports no torch,
so servers that run ONNX Runtime or TensorRT can read bundles without it.

Integrity: the manifest records the sha256 of every file serving reads (frames_sha256, each role's
sha256, each engine's sha256), and readers hash the very bytes they then parse, so a damaged or
replaced file raises IntegrityError instead of changing what is served.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .config import ROLES, TARGETS, NetworkConfig
from .io.atomic import atomic_write_bytes, atomic_write_json
from .sampling import (BundleSampling, Palette, RoleSampling, clip_layouts, layout_weights,
                       serving_problems)
from .schedule import SCHEDULES, Schedule, make_schedule

FORMAT = "sinfusion-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FRAMES = "frames.safetensors"
MODES = ("video", "image")


class BundleError(ValueError):
    """A bundle that is missing, damaged or of a format this version does not understand."""


class IntegrityError(BundleError):
    """A file of the bundle is missing or its bytes do not match the checksum in the manifest."""


def save_tensors(path: str | os.PathLike, tensors: dict[str, np.ndarray],
                 metadata: dict[str, str] | None = None) -> str:
    """Atomically write numpy arrays as safetensors; returns the file's sha256."""
    from safetensors.numpy import save

    data = save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise BundleError(f"{path}: file missing") from None
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise BundleError(f"{path}: not a readable safetensors file ({exc})") from None


def read_verified(path: str | os.PathLike, sha256: str, what: str, fix: str = "") -> bytes:
    """A file's bytes, checked against `sha256` when one is recorded (empty: unverified)."""
    fix = f"; {fix}" if fix else ""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"{path}: {what} file missing{fix}") from None
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise IntegrityError(f"{path}: checksum mismatch; the {what} file is damaged or was "
                             f"replaced{fix}")
    return data


def parse_tensors(data: bytes, path: str | os.PathLike) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise BundleError(f"{path}: not a readable safetensors file ({exc})") from None


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- manifest schema --------------------------------------------------------------------------------

@dataclass
class RoleEntry:
    """One trained role: how to rebuild its network and how to sample from it."""

    network: NetworkConfig
    schedule: dict  # {"kind": "cosine"|"linear", "steps": T}
    target: str  # "eps" | "x0": what the network predicts
    weights: str  # path inside the bundle
    sha256: str = ""
    trained_steps: int = 0
    settings: dict = field(default_factory=dict)  # training settings worth recording (crop, k, lr)

    def to_dict(self) -> dict:
        return {
            "network": self.network.to_dict(),
            "schedule": dict(self.schedule),
            "target": self.target,
            "weights": self.weights,
            "sha256": self.sha256,
            "trained_steps": self.trained_steps,
            "settings": dict(self.settings),
        }

    @classmethod
    def from_dict(cls, role: str, d: dict) -> RoleEntry:
        try:
            network = NetworkConfig.from_dict(d["network"])
            schedule = dict(d["schedule"])
            target = d["target"]
            weights = d["weights"]
        except KeyError as exc:
            raise BundleError(f"manifest roles.{role} lacks field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise BundleError(f"manifest roles.{role}.network is invalid: {exc}") from None
        if target not in TARGETS:
            raise BundleError(f"manifest roles.{role}.target {target!r} not in {TARGETS}")
        if schedule.get("kind") not in SCHEDULES or int(schedule.get("steps", 0)) < 1:
            raise BundleError(f"manifest roles.{role}.schedule {schedule} is invalid")
        return cls(network, schedule, target, weights, d.get("sha256", ""),
                   int(d.get("trained_steps", 0)), dict(d.get("settings", {})))

    def make_schedule(self) -> Schedule:
        return make_schedule(self.schedule["kind"], int(self.schedule["steps"]))


@dataclass
class Manifest:
    """manifest.json. `engines` entries are written by export and read by the server."""

    name: str
    mode: str  # "video" | "image" (single-image mode: Projector only)
    width: int
    height: int
    fps: float
    frame_count: int
    source: dict = field(default_factory=dict)
    roles: dict[str, RoleEntry] = field(default_factory=dict)
    correction_steps: int = 3  # default T_corr for serving
    correction_weight: float = 1.0  # share of the Projector's change a correction keeps (1: paper)
    correction_passes: int = 1  # corrections per frame, each on the last one's result (1: paper)
    predictor_margin: int = 0  # px of mirrored frame the Predictor works with (0: paper; sampling.py)
    # A coarse correction before those at T_corr: level (0: none, the paper's) and the share of its
    # change a frame keeps (sampling.correct).
    coarse_correction_level: int = 0
    coarse_correction_weight: float = 1.0
    # Each corrected frame of a stream moves this share of the way to a held layout (a frame
    # blurred by layout_sigma px): its start frame's (layout_window 0), or at each pixel the clip
    # frame's whose layout within layout_window px looks most like the frame's. Less where the
    # clip's layout varies, none where its standard deviation reaches layout_motion (0: everywhere
    # alike). Pull 0: none, the paper's (sampling.correct, sampling.layout_weights).
    layout_pull: float = 0.0
    layout_sigma: float = 0.0
    layout_motion: float = 0.0
    layout_window: int = 0
    engines: list[dict] = field(default_factory=list)
    # The trainer's own measurement: next-frame prediction on held-out frames against copying the
    # current frame (trainer/monitor.py documents the fields). Empty when none was made.
    quality: dict = field(default_factory=dict)
    frames_sha256: str = ""  # of the frames file; empty in bundles written before it was recorded
    # The clip's colour statistics (sinfusion.sampling.Palette), recorded with the frames; Generate
    # sets its first frame's colours to them. None in bundles written before it was recorded.
    palette: Palette | None = None
    created_by: str = f"sinfusion {__version__}"

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created_by": self.created_by,
            "name": self.name,
            "mode": self.mode,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "frame_count": self.frame_count,
            "frames": FRAMES,
            "frames_sha256": self.frames_sha256,
            "source": dict(self.source),
            "correction_steps": self.correction_steps,
            "correction_weight": self.correction_weight,
            "correction_passes": self.correction_passes,
            "predictor_margin": self.predictor_margin,
            "coarse_correction_level": self.coarse_correction_level,
            "coarse_correction_weight": self.coarse_correction_weight,
            "layout_pull": self.layout_pull,
            "layout_sigma": self.layout_sigma,
            "layout_motion": self.layout_motion,
            "layout_window": self.layout_window,
            "roles": {r: e.to_dict() for r, e in self.roles.items()},
            "engines": list(self.engines),
            "quality": dict(self.quality),
            **({"palette": self.palette.to_dict()} if self.palette else {}),
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = MANIFEST) -> Manifest:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise BundleError(f"{where}: not a SinFusion bundle manifest (format != {FORMAT!r})")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"{where}: bundle format version {version} is not supported by this version "
                f"(supports {FORMAT_VERSION}); re-train or upgrade sinfusion"
            )
        try:
            roles = {}
            for role, entry in d["roles"].items():
                if role not in ROLES:
                    raise BundleError(f"{where}: unknown role {role!r}; valid roles: {ROLES}")
                roles[role] = RoleEntry.from_dict(role, entry)
            m = cls(
                name=str(d["name"]),
                mode=d["mode"],
                width=int(d["width"]),
                height=int(d["height"]),
                fps=float(d["fps"]),
                frame_count=int(d["frame_count"]),
                source=dict(d.get("source", {})),
                roles=roles,
                correction_steps=int(d.get("correction_steps", 3)),
                correction_weight=float(d.get("correction_weight", 1.0)),
                correction_passes=int(d.get("correction_passes", 1)),
                predictor_margin=int(d.get("predictor_margin", 0)),
                coarse_correction_level=int(d.get("coarse_correction_level", 0)),
                coarse_correction_weight=float(d.get("coarse_correction_weight", 1.0)),
                layout_pull=float(d.get("layout_pull", 0.0)),
                layout_sigma=float(d.get("layout_sigma", 0.0)),
                layout_motion=float(d.get("layout_motion", 0.0)),
                layout_window=int(d.get("layout_window", 0)),
                engines=list(d.get("engines", [])),
                quality=dict(d.get("quality") or {}),
                frames_sha256=str(d.get("frames_sha256") or ""),
                palette=Palette.from_dict(d["palette"]) if d.get("palette") else None,
                created_by=str(d.get("created_by", "")),
            )
        except KeyError as exc:
            raise BundleError(f"{where}: missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, BundleError):
                raise
            raise BundleError(f"{where}: invalid value ({exc})") from None
        if m.mode not in MODES:
            raise BundleError(f"{where}: mode {m.mode!r} not in {MODES}")
        if m.width < 1 or m.height < 1 or m.frame_count < 1:
            raise BundleError(f"{where}: frame size and count must be positive")
        projector = m.roles.get("projector")
        problems = serving_problems(m.correction_weight, m.correction_passes, m.predictor_margin,
                                    m.coarse_correction_level, m.coarse_correction_weight,
                                    int(projector.schedule["steps"]) if projector else None,
                                    m.layout_pull, m.layout_sigma, m.layout_motion,
                                    m.layout_window)
        if problems:
            raise BundleError(f"{where}: {problems[0]}")
        return m


# --- the bundle ---------------------------------------------------------------------------------

class Bundle:
    """A bundle folder on disk, opened with a validated manifest."""

    def __init__(self, path: str | os.PathLike, manifest: Manifest) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._layout_cache: tuple | None = None  # (manifest setting, (weights, clip layouts))

    @classmethod
    def open(cls, path: str | os.PathLike) -> Bundle:
        path = Path(path)
        if not path.is_dir():
            raise BundleError(f"{path}: no such bundle folder")
        mpath = path / MANIFEST
        try:
            data = json.loads(mpath.read_text())
        except FileNotFoundError:
            raise BundleError(f"{path}: not a bundle (no {MANIFEST})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{mpath}: not valid JSON ({exc})") from None
        return cls(path, Manifest.from_dict(data, str(mpath)))

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def roles(self) -> list[str]:
        return list(self.manifest.roles)

    def role(self, role: str) -> RoleEntry:
        if role not in ROLES:
            raise BundleError(f"unknown role {role!r}; valid roles: {', '.join(ROLES)}")
        if role not in self.manifest.roles:
            raise BundleError(f"{self.path}: bundle has no trained {role} (has: {', '.join(self.roles)})")
        return self.manifest.roles[role]

    def frames(self) -> np.ndarray:
        """The clip at model resolution, uint8 (N, H, W, 3), checksum-verified.

        Bundles written before the manifest recorded frames_sha256 are checked against the trainer's
        hash of the pixels (source.frames_sha256) when they have one.
        """
        path = self.path / FRAMES
        frames = parse_tensors(read_verified(path, self.manifest.frames_sha256, "frames"), path)
        frames = frames.get("frames")
        m = self.manifest
        if frames is None:
            raise BundleError(f"{path}: no 'frames' tensor")
        if frames.dtype != np.uint8 or frames.shape[1:] != (m.height, m.width, 3):
            raise BundleError(f"{path}: frames {frames.dtype} {frames.shape} do not match the "
                              f"manifest's {m.height}x{m.width}")
        pixels = m.source.get("frames_sha256") if not m.frames_sha256 else None
        if pixels and hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest() != pixels:
            raise IntegrityError(f"{path}: checksum mismatch (source.frames_sha256); the frames "
                                 f"file is damaged or was replaced")
        return frames

    def weights(self, role: str, verify: bool = True) -> dict[str, np.ndarray]:
        """The served (EMA) weights of a role, checksum-verified (the bytes hashed are those parsed)."""
        entry = self.role(role)
        path = self.path / entry.weights
        return parse_tensors(read_verified(path, entry.sha256 if verify else "", "weights"), path)

    def verify_weights(self, role: str) -> None:
        """Check a role's weights file against the manifest without parsing it (IntegrityError)."""
        entry = self.role(role)
        read_verified(self.path / entry.weights, entry.sha256, "weights")

    def unverifiable(self) -> list[str]:
        """Files serving may read whose manifest records no checksum (older bundles)."""
        missing = [] if self.manifest.frames_sha256 or self.manifest.source.get("frames_sha256") \
            else [FRAMES]
        return missing + [e.weights for e in self.manifest.roles.values() if not e.sha256]

    def sampling(self) -> BundleSampling:
        """The sampling facts of every trained role (with the layout pull of each pixel, and the
        clip's layouts where they are held to, from the clip, where the bundle holds its streams'
        layout)."""
        m = self.manifest
        weights, layouts = self._layout_hold()
        return BundleSampling({r: RoleSampling(e.make_schedule(), e.target)
                               for r, e in m.roles.items()}, m.palette,
                              m.correction_weight, m.correction_passes, m.predictor_margin,
                              m.coarse_correction_level, m.coarse_correction_weight, m.layout_pull,
                              m.layout_sigma, m.layout_motion, m.layout_window, weights, layouts)

    def _layout_hold(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """sampling.layout_weights and, with a layout window, sampling.clip_layouts of this clip,
        made once per manifest setting; (None, None) without a layout pull."""
        m = self.manifest
        if not m.layout_pull:
            return None, None
        key = (m.layout_pull, m.layout_sigma, m.layout_motion, m.layout_window)
        if self._layout_cache is None or self._layout_cache[0] != key:
            frames = self.frames()
            layouts = clip_layouts(frames, m.layout_sigma) if m.layout_window else None
            self._layout_cache = (key, (layout_weights(frames, *key[:3]), layouts))
        return self._layout_cache[1]

    def save_manifest(self) -> None:
        atomic_write_json(self.path / MANIFEST, self.manifest.to_dict())

    # --- writing -----------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, manifest: Manifest, frames: np.ndarray) -> Bundle:
        """Start a bundle: frames and manifest (no roles trained yet). Refuses a non-bundle folder."""
        path = Path(path)
        if path.exists() and any(path.iterdir()) and not (path / MANIFEST).exists():
            raise BundleError(f"{path}: exists and is not a bundle; choose another --out")
        path.mkdir(parents=True, exist_ok=True)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
        manifest.frames_sha256 = save_tensors(path / FRAMES, {"frames": frames})
        manifest.palette = Palette.of(frames)
        bundle = cls(path, manifest)
        bundle.save_manifest()
        return bundle

    def write_weights(self, role: str, entry: RoleEntry, tensors: dict[str, np.ndarray]) -> None:
        """Store a role's served weights and record them in the manifest (both atomically)."""
        entry.sha256 = save_tensors(self.path / entry.weights, tensors, {"role": role})
        roles = dict(self.manifest.roles, **{role: entry})
        self.manifest.roles = {r: roles[r] for r in ROLES if r in roles}  # paper order, always
        self.save_manifest()


def weights_path(role: str) -> str:
    return f"weights/{role}.safetensors"
