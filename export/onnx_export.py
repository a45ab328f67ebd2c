"""PyTorch -> ONNX for one engine: trace DiffusionStep at fixed shapes, check it with ONNX Runtime.

Exporter: the TorchScript-based torch.onnx exporter (dynamo=False). The step has no data-dependent
control flow and fixed shapes, so tracing captures it exactly, writes one self-contained file, and
takes about 0.1 s per engine where the torch.export-based exporter takes about 2 s (measured on the
tiny network, torch 2.13). torch marks it deprecated; `dynamo=True` switches to the newer exporter,
and the parity check below judges either one by numbers.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

from sinfusion.config import NetworkConfig
from sinfusion.engines import OUTPUT, input_names, input_specs
from sinfusion.network import DiffusionStep, SinFusionNet

from .parity import max_abs_error, torch_step

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
OPSETS = range(13, 21)  # 13: the oldest ONNX Runtime/TensorRT still run well; 20: TensorRT 10's parser
DEFAULT_OPSET = 17


class StepGraph(nn.Module):
    """DiffusionStep with the engine's inputs as plain positional tensors, in sinfusion.engines order.

    The graph's inputs and output stay float32 at every precision: an fp16 engine holds the network in
    half precision and DiffusionStep casts around it, keeping the step's update in float32.
    """

    def __init__(self, step: DiffusionStep, config: NetworkConfig) -> None:
        super().__init__()
        self.step = step
        self.names = input_names(config)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        given = dict(zip(self.names, inputs))
        return self.step(given["x"], given.get("cond"), given["t"], given.get("k"), given["coef"],
                         given["noise"])


def step_for(config: NetworkConfig, weights: dict[str, np.ndarray], precision: str = "fp32"
             ) -> DiffusionStep:
    """A role's DiffusionStep with its served weights, in eval mode, at a precision."""
    net = SinFusionNet(config)
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
    return DiffusionStep(net.to(DTYPES[precision]).eval())


def to_onnx(step: DiffusionStep, config: NetworkConfig, batch: int, height: int, width: int,
            opset: int = DEFAULT_OPSET, dynamo: bool = False) -> bytes:
    """Serialized ONNX model of one step at a fixed shape."""
    specs = input_specs(config, batch, height, width)
    example = tuple(torch.zeros(s.shape, dtype=torch.float32) for s in specs)
    graph = StepGraph(step, config).eval()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # torch warns that the TorchScript exporter is deprecated; that choice is documented above.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        if dynamo:
            program = torch.onnx.export(graph, example, input_names=[s.name for s in specs],
                                        output_names=[OUTPUT], opset_version=opset, dynamo=True,
                                        external_data=False)
            return program.model_proto.SerializeToString()
        buffer = io.BytesIO()
        torch.onnx.export(graph, example, buffer, input_names=[s.name for s in specs],
                          output_names=[OUTPUT], opset_version=opset, dynamo=False,
                          do_constant_folding=True)
        return buffer.getvalue()


def onnx_parity(data: bytes, reference: DiffusionStep, feed: dict[str, np.ndarray]) -> float:
    """max |ONNX Runtime (CPU) - PyTorch float32| of one step on the same inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    out = session.run([OUTPUT], feed)[0]
    return max_abs_error(out, torch_step(reference, feed))

