"""Runtime selection: which engine runs a bundle's diffusion steps, chosen once per bundle at startup.

`--runtime auto` tries, per bundle, tensorrt, onnxruntime-cuda, torch-cuda, onnxruntime-cpu, torch-cpu
and keeps the first that loads. torch-cuda is the compiled, graph-captured step with the sampling loop's
arrays on the GPU (sinfusion.runtimes.torch_compiled, docs/gpu.md), warmed up (compiled) at load;
torch-cuda-eager, the plain fp32 step, is never picked by auto (the reference it is measured against). A runtime is skipped quietly (debug log) when its package is not
installed, its device is absent or the bundle has no engines for it: that is the machine, not the
bundle. It is skipped with a WARNING when the bundle has files for it that fail to load (a checksum
mismatch, an engine ONNX Runtime cannot read, a plan built for another GPU): then the server runs
on a slower runtime than the operator prepared, which must never happen silently. A forced runtime
that cannot load is an error naming the reason. The runtimes themselves live in sinfusion.runtimes;
the ONNX Runtime and TensorRT modules are imported lazily, so this works with PyTorch alone.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

from sinfusion.bundle import Bundle, BundleError
from sinfusion.engines import has_engines
from sinfusion.sampling import Denoiser

from .config import RUNTIME_CHOICES, RUNTIME_ORDER, ConfigError

log = logging.getLogger("sinfusion.server")


class Unavailable(Exception):
    """This runtime cannot serve this bundle here (reason in the message).

    `broken`: the bundle has files for this runtime and they failed to load (see the module doc).
    """

    def __init__(self, reason: str, broken: bool = False) -> None:
        super().__init__(reason)
        self.broken = broken


@dataclass
class LoadedRuntime:
    """A runtime with its engines loaded for one bundle."""

    name: str  # one of RUNTIME_ORDER
    denoiser: Denoiser
    batch_sizes: dict[str, tuple[int, ...]]  # per served role: engine batch sizes, ascending


def _engine_batch_sizes(denoiser, bundle: Bundle) -> dict[str, tuple[int, ...]]:
    """Roles the fixed-shape engines cover, with their batch sizes (roles without engines left out).

    A role with engines, but not at every size its steps take (a Predictor's canvas, a coarsely
    correcting Projector's: BundleSampling.sizes), was exported before its manifest asked for that
    size: broken, so that `auto` falls back with a warning naming the export to run."""
    m, sampling = bundle.manifest, bundle.sampling()
    exported = {e.role for e in denoiser.entries}
    sizes = {}
    for role in bundle.roles:
        if role not in exported:
            continue
        try:
            for height, width in sampling.sizes(role, m.height, m.width):
                found = denoiser.batch_sizes(role, height, width)
                sizes.setdefault(role, tuple(sorted({int(b) for b in found})))  # at the canvas
        except BundleError as exc:
            raise Unavailable(str(exc), broken=True) from None
    if not sizes:
        raise Unavailable("the bundle has no engines for it")
    return sizes


def _import(module: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{what} is not installed ({exc})") from None


def _load_tensorrt(bundle: Bundle, max_batch: int) -> LoadedRuntime:
    if not has_engines(bundle, "tensorrt"):
        raise Unavailable("the bundle has no tensorrt engines")
    _import("tensorrt", "TensorRT")
    mod = _import("sinfusion.runtimes.tensorrt_runtime", "the TensorRT runtime")
    reason = mod.unavailable_reason()
    if reason:
        raise Unavailable(reason)
    try:
        denoiser = mod.TensorRTDenoiser(bundle)
    except BundleError as exc:
        raise Unavailable(str(exc), broken=True) from None
    return LoadedRuntime("tensorrt", denoiser, _engine_batch_sizes(denoiser, bundle))


def _load_onnx(bundle: Bundle, provider: str, name: str) -> LoadedRuntime:
    ort = _import("onnxruntime", "ONNX Runtime")
    if provider not in ort.get_available_providers():
        raise Unavailable(f"ONNX Runtime has no {provider} here")
    if not has_engines(bundle, "onnx"):
        raise Unavailable("the bundle has no onnx engines")
    mod = _import("sinfusion.runtimes.onnx_runtime", "the ONNX Runtime runtime")
    try:
        denoiser = mod.OnnxDenoiser(bundle, providers=[provider])
    except BundleError as exc:
        raise Unavailable(str(exc), broken=True) from None
    return LoadedRuntime(name, denoiser, _engine_batch_sizes(denoiser, bundle))


def _load_torch(bundle: Bundle, device: str, max_batch: int) -> LoadedRuntime:
    torch = _import("torch", "PyTorch")
    if device == "cuda" and not torch.cuda.is_available():
        raise Unavailable("no CUDA device")
    from sinfusion.runtimes.torch_runtime import TorchDenoiser

    try:
        denoiser = TorchDenoiser(bundle, device)  # weights checksum-verified as they load
    except BundleError as exc:
        raise Unavailable(str(exc), broken=True) from None
    # PyTorch runs any batch size; the scheduler groups up to max_batch streams per call.
    sizes = tuple(range(1, max_batch + 1))
    name = "torch-cuda-eager" if device == "cuda" else "torch-cpu"
    return LoadedRuntime(name, denoiser, {role: sizes for role in bundle.roles})


def compiled_batch_sizes(max_batch: int) -> tuple[int, ...]:
    """The batches torch-cuda compiles and captures: powers of two up to max_batch, and max_batch.
    Each costs a compile at a cold start; other batches are padded up to the next of them."""
    sizes = {max_batch}
    size = 1
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


def _load_torch_compiled(bundle: Bundle, max_batch: int, compile_cache: Path | None) -> LoadedRuntime:
    torch = _import("torch", "PyTorch")
    if not torch.cuda.is_available():
        raise Unavailable("no CUDA device")
    from sinfusion.runtimes.torch_compiled import CompiledTorchDenoiser

    sizes = compiled_batch_sizes(max_batch)
    try:  # compiles and captures every (role, batch) now: minutes cold, seconds with the cache
        denoiser = CompiledTorchDenoiser(bundle, "cuda", batch_sizes=sizes, cache_dir=compile_cache)
    except BundleError as exc:
        raise Unavailable(str(exc), broken=True) from None
    log.info("bundle %s: torch-cuda %s", bundle.name, denoiser.describe())
    return LoadedRuntime("torch-cuda", denoiser, {role: sizes for role in bundle.roles})


def load_runtime(bundle: Bundle, name: str, max_batch: int, *, compile_cache: Path | None = None
                 ) -> LoadedRuntime:
    """Load one named runtime for a bundle; Unavailable says why it cannot."""
    if name == "tensorrt":
        return _load_tensorrt(bundle, max_batch)
    if name == "onnxruntime-cuda":
        return _load_onnx(bundle, "CUDAExecutionProvider", name)
    if name == "onnxruntime-cpu":
        return _load_onnx(bundle, "CPUExecutionProvider", name)
    if name == "torch-cuda":
        return _load_torch_compiled(bundle, max_batch, compile_cache)
    if name == "torch-cuda-eager":
        return _load_torch(bundle, "cuda", max_batch)
    if name == "torch-cpu":
        return _load_torch(bundle, "cpu", max_batch)
    raise ConfigError(f"unknown runtime {name!r}; valid: {', '.join(RUNTIME_CHOICES)}")


def select_runtime(bundle: Bundle, choice: str, max_batch: int, *, compile_cache: Path | None = None
                   ) -> LoadedRuntime:
    """The runtime for a bundle: the forced one, or with "auto" the best that loads."""
    candidates = RUNTIME_ORDER if choice == "auto" else (choice,)
    reasons, broken = [], []
    for name in candidates:
        try:
            runtime = load_runtime(bundle, name, max_batch, compile_cache=compile_cache)
        except Unavailable as exc:
            reasons.append(f"{name}: {exc}")
            if exc.broken:
                broken.append(f"{name}: {exc}")
            log.debug("bundle %s: runtime %s skipped: %s", bundle.name, name, exc)
            continue
        for reason in broken:
            log.warning("bundle %s: falling back to runtime %s because %s", bundle.name,
                        runtime.name, reason)
        log.info("bundle %s: runtime %s, batch sizes %s", bundle.name, runtime.name,
                 {r: list(s) for r, s in runtime.batch_sizes.items()})
        return runtime
    raise ConfigError("no runtime can serve it: " + "; ".join(reasons))
