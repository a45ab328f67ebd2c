"""ONNX -> TensorRT plan for one engine, with the tensorrt Python API.

The network is strongly typed: its precision is the ONNX graph's (the fp16 graph holds the network in
half precision and casts at its float32 inputs and output). That is TensorRT 11's only mode, and
TensorRT 10 opts in with the STRONGLY_TYPED flag, so the same build runs on both; the weak-typing
BuilderFlag.FP16 route is gone in 11. Shapes are fixed in the ONNX graph, so no optimization profile is
needed; the parsed network is checked against sinfusion.engines instead, the same layout the runtime
allocates its buffers from.
"""

from __future__ import annotations

from sinfusion.config import NetworkConfig
from sinfusion.engines import input_specs, output_specs

from .errors import ExportError

WORKSPACE_BYTES = 1 << 30  # scratch memory TensorRT may use for tactics while building


def build_plan(onnx_bytes: bytes, config: NetworkConfig, batch: int, height: int, width: int,
               precision: str) -> bytes:
    """A serialized TensorRT plan of one step's ONNX graph."""
    import tensorrt as trt

    from sinfusion.runtimes.tensorrt_runtime import logger

    log = logger()
    builder = trt.Builder(log)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, log)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse the ONNX graph: {errors}")
    _check_io(network, config, batch, height, width)
    build_config = builder.create_builder_config()
    build_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        build_config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32, not 10-bit-mantissa TF32
    plan = builder.build_serialized_network(network, build_config)
    if plan is None:
        raise ExportError("TensorRT could not build a plan for this graph (see its log above)")
    return bytes(plan)


def _check_io(network, config: NetworkConfig, batch: int, height: int, width: int) -> None:
    import tensorrt as trt

    got = [network.get_input(i) for i in range(network.num_inputs)]
    got += [network.get_output(i) for i in range(network.num_outputs)]
    want = input_specs(config, batch, height, width) + output_specs(batch, height, width)
    found = [(t.name, tuple(t.shape), t.dtype) for t in got]
    expected = [(s.name, s.shape, trt.float32) for s in want]
    if found != expected:
        raise ExportError(f"parsed network's inputs/outputs {found} differ from {expected}")
