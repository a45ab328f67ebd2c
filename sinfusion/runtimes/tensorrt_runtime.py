"""The TensorRT runtime: exported fixed-shape plans on an NVIDIA GPU.

Lifecycle of one engine (a plan of one role at one batch and frame size): check that it was built for
this GPU model and TensorRT version, deserialize it, allocate its device buffers once from the layout
in sinfusion.engines, bind them by tensor name, then per call copy the inputs in, `execute_async_v3`
on a private CUDA stream and copy x_next out. Batching to the exported sizes is shared with ONNX
Runtime (runtimes/fixed.py). Buffers are torch CUDA tensors: torch is already how this project talks
to CUDA, so no second CUDA binding is needed.

Not run on hardware in this project's CI (no GPU); see docs/export.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from ..bundle import Bundle, BundleError
from ..config import NetworkConfig
from ..engines import OUTPUT, EngineEntry, input_specs, output_specs
from .fixed import FixedShapeDenoiser


def unavailable_reason() -> str | None:
    """Why TensorRT cannot run here, in one line; None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt Python package is not installed (install the gpu extra on an NVIDIA host)"
    try:
        import torch
    except ImportError:
        return "torch is not installed (TensorRT buffers are torch CUDA tensors)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch"
    return None


def device_facts(device: int = 0) -> dict[str, str]:
    """What a plan is tied to: the GPU model, its compute capability and the TensorRT version."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return {"gpu": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}",
            "tensorrt_version": trt.__version__}


@lru_cache(maxsize=1)
def logger():
    """One process-wide TensorRT logger: builders and runtimes keep using it after creation."""
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


class TensorRTEngine:
    """One deserialized plan with its device buffers, allocated once and bound by tensor name."""

    def __init__(self, plan: bytes, config: NetworkConfig, batch: int, height: int, width: int,
                 where: str, device: int = 0) -> None:
        import torch

        self.device = torch.device("cuda", device)
        with torch.cuda.device(self.device):  # TensorRT works on the current CUDA device
            self._setup(plan, config, batch, height, width, where)

    def _setup(self, plan: bytes, config: NetworkConfig, batch: int, height: int, width: int,
               where: str) -> None:
        import tensorrt as trt
        import torch

        self.runtime = trt.Runtime(logger())
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BundleError(f"{where}: TensorRT {trt.__version__} cannot load this plan; "
                              f"re-export it on this machine (sinfusion-export --kind tensorrt)")
        self.context = self.engine.create_execution_context()
        inputs = input_specs(config, batch, height, width)
        specs = inputs + output_specs(batch, height, width)
        if self.engine.num_io_tensors != len(specs):
            raise BundleError(f"{where}: plan has {self.engine.num_io_tensors} inputs/outputs, "
                              f"expected {len(specs)}; re-export the bundle")
        self.inputs = [s.name for s in inputs]
        self.buffers = {}
        for spec in specs:
            shape = tuple(self.engine.get_tensor_shape(spec.name))
            dtype = self.engine.get_tensor_dtype(spec.name)
            if shape != spec.shape or dtype != trt.float32:
                raise BundleError(f"{where}: tensor {spec.name} is {dtype} {shape}, expected "
                                  f"float32 {spec.shape}; re-export the bundle")
            buffer = torch.empty(spec.shape, dtype=torch.float32, device=self.device)
            self.context.set_tensor_address(spec.name, buffer.data_ptr())
            self.buffers[spec.name] = buffer
        self.stream = torch.cuda.Stream(self.device)

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            for name in self.inputs:
                self.buffers[name].copy_(torch.from_numpy(feed[name]))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            out = self.buffers[OUTPUT].to("cpu")
        self.stream.synchronize()
        return out.numpy()


def check_plan_matches(entry: EngineEntry, facts: dict[str, str], where: str) -> None:
    """Refuse a plan built for another GPU model or TensorRT version (it would fail or misbehave)."""
    for field_name in ("gpu", "compute_capability", "tensorrt_version"):
        built, here = getattr(entry, field_name), facts[field_name]
        if built != here:
            raise BundleError(f"{where}: plan was built for {field_name.replace('_', ' ')} {built!r}, "
                              f"this machine has {here!r}; re-export it here: "
                              f"sinfusion-export BUNDLE --kind tensorrt")


class TensorRTDenoiser(FixedShapeDenoiser):
    """Denoiser over a bundle's TensorRT plans (fp16 by default)."""

    kind = "tensorrt"
    name = "tensorrt"
    call_cost = 8.0  # a GPU call's fixed cost dominates small batches: prefer one padded call

    def __init__(self, bundle: Bundle, roles: Sequence[str] | None = None,
                 precision: str | None = None, device: int = 0) -> None:
        reason = unavailable_reason()
        if reason:  # a BundleError like a plan for another GPU: these engines cannot load here
            raise BundleError(f"{bundle.path}: TensorRT engines cannot run here: {reason}")
        self.device = device
        self.facts = device_facts(device)
        super().__init__(bundle, roles, precision)

    def _load(self, entry: EngineEntry, data: bytes) -> TensorRTEngine:
        where = str(self.bundle.path / entry.file)
        check_plan_matches(entry, self.facts, where)
        config = self.bundle.role(entry.role).network
        return TensorRTEngine(data, config, entry.batch, entry.height, entry.width, where,
                              self.device)

    def _run(self, engine: TensorRTEngine, feed: dict[str, np.ndarray]) -> np.ndarray:
        return engine(feed)
