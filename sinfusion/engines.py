"""The one description of the exported engines: their inputs and outputs, and their manifest entries.

An engine is one diffusion step of one role (`sinfusion.network.DiffusionStep`) at a fixed
(batch, height, width, precision). Every consumer reads the tensor layout from here: the ONNX export
names the graph's inputs with it, the TensorRT build checks the parsed network against it and the
TensorRT runtime allocates its device buffers from it, and the runtimes feed the Denoiser arguments
through `step_feed`. Inputs and outputs are float32 at every precision: an fp16 engine casts inside
the graph, so the sampling loop never sees half-precision arrays.

Torch-free, like sinfusion.bundle, so a server that runs ONNX Runtime or TensorRT reads it cheaply.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from .bundle import Bundle, BundleError
from .config import ROLES, NetworkConfig

KINDS = ("onnx", "tensorrt")
PRECISIONS = ("fp32", "fp16")
DEFAULT_PRECISION = {"onnx": "fp32", "tensorrt": "fp16"}
SUFFIX = {"onnx": "onnx", "tensorrt": "plan"}
ENGINES_DIR = "engines"

# Bounds of an engine's shape. The backbone has no down/up-sampling (paper section 4), so every
# height and width is a size the network accepts; the upper bounds only keep an engine's buffers
# sane (4096 px a side, 64 samples per call).
MAX_SIDE = 4096
MAX_BATCH = 64

# Largest |engine - PyTorch| over one step's output that export accepts, per precision. The output is
# a frame in about [-1, 1] (plus noise). fp32 engines only reorder float32 arithmetic: ONNX Runtime
# shows 2e-5 on the paper's network at 144x256, so 1e-3 leaves 50x; a wrong graph is off by O(0.1).
# fp16 showed 8e-3 there (eps target, 72x128); 5e-2 is under 7 levels of an 8-bit frame (2/255 each).
# The figures and how they were measured: docs/export.md.
PARITY_BOUND = {"fp32": 1e-3, "fp16": 5e-2}

OUTPUT = "x_next"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an engine: name, numpy dtype name, fixed shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]


def input_names(config: NetworkConfig) -> list[str]:
    """The engine's inputs in DiffusionStep's argument order; cond and k only where the role has them."""
    names = ["x"]
    if config.cond_channels:
        names.append("cond")
    names.append("t")
    if config.use_k:
        names.append("k")
    return names + ["coef", "noise"]


def input_specs(config: NetworkConfig, batch: int, height: int, width: int) -> list[TensorSpec]:
    image = (batch, 3, height, width)
    shapes = {
        "x": image,
        "cond": (batch, config.cond_channels, height, width),
        "t": (batch,),
        "k": (batch,),
        "coef": (batch, 5),  # sinfusion.network.COEF_NAMES
        "noise": image,
    }
    return [TensorSpec(n, "float32", shapes[n]) for n in input_names(config)]


def output_specs(batch: int, height: int, width: int) -> list[TensorSpec]:
    return [TensorSpec(OUTPUT, "float32", (batch, 3, height, width))]


def step_feed(config: NetworkConfig, x, cond, t, k, coef, noise) -> dict[str, np.ndarray]:
    """The Denoiser's arguments as an engine's named inputs (float32, contiguous)."""
    given = {"x": x, "cond": cond, "t": t, "k": k, "coef": coef, "noise": noise}
    feed = {}
    for name in input_names(config):
        if given[name] is None:
            raise ValueError(f"this network needs input {name!r}, got None")
        feed[name] = np.ascontiguousarray(given[name], dtype=np.float32)
    return feed


def validate_shape(batch: int, height: int, width: int) -> None:
    """Refuse an engine shape the network cannot take; the message names the field and range."""
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch must be in [1, {MAX_BATCH}], got {batch}")
    for field_name, side in (("height", height), ("width", width)):
        if not 1 <= side <= MAX_SIDE:
            raise ValueError(f"{field_name} must be in [1, {MAX_SIDE}], got {side}")


# --- manifest entries ---------------------------------------------------------------------------

@dataclass
class EngineEntry:
    """One exported engine, as listed in manifest "engines"."""

    role: str
    kind: str  # "onnx" | "tensorrt"
    batch: int
    height: int
    width: int
    precision: str  # "fp32" | "fp16"
    file: str  # path inside the bundle, under engines/
    sha256: str
    parity_max_abs_error: float  # max |engine - PyTorch| of one step at export
    # TensorRT only: a plan runs only on the GPU model and TensorRT version it was built with.
    gpu: str = ""
    compute_capability: str = ""  # "9.0"
    tensorrt_version: str = ""

    @property
    def key(self) -> tuple:
        """Entries with equal keys describe the same engine; a re-export replaces the old one."""
        return (self.role, self.kind, self.batch, self.height, self.width, self.precision)

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.kind != "tensorrt":
            for name in ("gpu", "compute_capability", "tensorrt_version"):
                d.pop(name)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest engines") -> EngineEntry:
        known = {f.name for f in fields(cls)}
        try:
            entry = cls(**{k: v for k, v in d.items() if k in known})
            entry.batch, entry.height, entry.width = int(entry.batch), int(entry.height), int(entry.width)
            entry.parity_max_abs_error = float(entry.parity_max_abs_error)
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{where}: invalid engine entry {d!r} ({exc})") from None
        if entry.role not in ROLES or entry.kind not in KINDS or entry.precision not in PRECISIONS:
            raise BundleError(f"{where}: engine entry {d!r} has an unknown role, kind or precision")
        return entry


def engine_file(role: str, kind: str, batch: int, height: int, width: int, precision: str,
                sha256: str) -> str:
    """Bundle-relative path of an engine. The content hash in the name means a re-export never
    overwrites a file the current manifest points to: the manifest switch is the one atomic step."""
    return (f"{ENGINES_DIR}/{role}-b{batch}-{width}x{height}-{precision}.{sha256[:12]}."
            f"{SUFFIX[kind]}")  # WxH, as the CLI's --size


def engine_entries(bundle: Bundle, kind: str | None = None, role: str | None = None) -> list[EngineEntry]:
    """The bundle's engines, optionally of one kind and role."""
    entries = [EngineEntry.from_dict(d, f"{bundle.path}/manifest.json engines")
               for d in bundle.manifest.engines]
    return [e for e in entries
            if (kind is None or e.kind == kind) and (role is None or e.role == role)]


def has_engines(bundle: Bundle, kind: str) -> bool:
    """Whether the bundle lists any engine of this kind (the server's runtime choice asks this)."""
    return bool(engine_entries(bundle, kind))


def merge_entries(existing: list[dict], new: list[EngineEntry]) -> list[dict]:
    """Manifest engine list with `new` replacing entries of the same key, in a stable order."""
    keys = {e.key for e in new}
    kept = [d for d in existing if EngineEntry.from_dict(d).key not in keys]
    merged = kept + [e.to_dict() for e in new]
    return sorted(merged, key=lambda d: (d["kind"], d["role"], d["height"], d["width"],
                                         d["precision"], d["batch"]))
