"""Export a bundle's networks to fixed-shape engines: ONNX (ONNX Runtime) and TensorRT plans.

One engine is one diffusion step of one role (sinfusion.network.DiffusionStep) at a fixed
(batch, height, width, precision), with the tensor layout of sinfusion.engines. Every engine is
parity-checked against PyTorch before it is recorded in the bundle's manifest.

    from sinfusion.export import ExportOptions, export_bundle
    entries = export_bundle(Bundle.open("clip.bundle"), ExportOptions(kinds=("onnx",)))

The CLI is `sinfusion-export` (export.cli).
"""

from .pipeline import ExportError, ExportOptions, export_bundle

__all__ = ["ExportError", "ExportOptions", "export_bundle"]
