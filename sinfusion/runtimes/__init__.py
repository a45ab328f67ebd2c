"""Runtimes: objects implementing sinfusion.sampling.Denoiser over one bundle's roles.

They differ only in how a batch of arrays goes through an engine; the sampling loop is shared.
- torch_runtime: the PyTorch modules themselves (CPU or CUDA); used by `trainer sample` and as a fallback.
- onnx_runtime and tensorrt_runtime: exported fixed-shape engines (see export/, docs/export.md).
- fixed: what those two share: checksum-verified loading and splitting/padding a batch to the
  exported batch sizes.
"""
