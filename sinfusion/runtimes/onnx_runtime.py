"""The ONNX Runtime runtime: exported fixed-shape ONNX engines on the CPU (the embedded default) or CUDA.

Each engine is one diffusion step (sinfusion.network.DiffusionStep) at a fixed batch and frame size;
the batching to those sizes is shared with TensorRT (runtimes/fixed.py). Imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..bundle import Bundle, BundleError
from ..engines import OUTPUT
from .fixed import FixedShapeDenoiser

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class OnnxDenoiser(FixedShapeDenoiser):
    """Denoiser over a bundle's ONNX engines.

    providers: ONNX Runtime execution providers in priority order; None = the CPU. Asking for CUDA
    where this onnxruntime build lacks it is an error, not a silent fall back to the CPU.
    threads: intra-op threads per session (0 = ONNX Runtime's default, one per core).
    """

    kind = "onnx"

    def __init__(self, bundle: Bundle, providers: list[str] | None = None,
                 roles: Sequence[str] | None = None, precision: str | None = None,
                 threads: int = 0) -> None:
        import onnxruntime as ort

        self.providers = list(providers) if providers else [CPU]
        missing = [p for p in self.providers if p not in ort.get_available_providers()]
        if missing:
            raise BundleError(f"onnxruntime here lacks {', '.join(missing)} (has: "
                              f"{', '.join(ort.get_available_providers())})")
        self.name = "onnxruntime-cuda" if self.providers[0] == CUDA else "onnxruntime-cpu"
        # The CPU provider batches poorly past the cores it has: prefer exact splits over padding.
        # On CUDA a call's launch cost dominates, so one padded call beats two exact ones.
        self.call_cost = 8.0 if self.providers[0] == CUDA else 1.0
        self._options = ort.SessionOptions()
        self._options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning worker threads stall badly when the server's other threads (or other processes)
        # want the same cores; like OMP_WAIT_POLICY=PASSIVE for torch (sinfusion/__init__.py).
        self._options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            self._options.intra_op_num_threads = threads
            self._options.inter_op_num_threads = 1
        super().__init__(bundle, roles, precision)

    def _load(self, entry, data: bytes):
        import onnxruntime as ort

        try:
            return ort.InferenceSession(data, self._options, providers=self.providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types
            raise BundleError(f"{self.bundle.path / entry.file}: ONNX Runtime cannot load this "
                              f"engine ({str(exc).splitlines()[0]}); re-export the bundle") from None

    def _run(self, session, feed: dict[str, np.ndarray]) -> np.ndarray:
        return session.run([OUTPUT], feed)[0]
