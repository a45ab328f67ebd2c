"""Export a bundle: every requested (role, kind, batch, size, precision) engine, parity-checked,
then written so that the bundle is never half-updated.

Order of work, and why:
1. Validate everything asked for (roles, shapes, precision, opset, TensorRT present) before any work.
2. Build every engine in memory and check its parity with PyTorch float32; one engine over its bound
   stops the export with nothing written.
3. Write the engine files. Their names carry their content hash, so no file the current manifest
   lists is ever overwritten: a reader of the old manifest keeps working while the new files land.
4. Write the manifest (atomically, Bundle.save_manifest): the one step that switches engines.
5. Delete engine files that the manifest no longer lists.
An interrupted export therefore leaves the last good manifest with intact files. One export at a
time per bundle: two concurrent exports would each delete the other's new files in step 5.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from sinfusion.bundle import Bundle
from sinfusion.config import ROLES
from sinfusion.engines import (DEFAULT_PRECISION, ENGINES_DIR, KINDS, PARITY_BOUND, PRECISIONS,
                               SUFFIX, EngineEntry, engine_entries, engine_file, merge_entries,
                               validate_shape)
from sinfusion.io.atomic import atomic_write_bytes

from .errors import ExportError
from .onnx_export import DEFAULT_OPSET, OPSETS, onnx_parity, step_for, to_onnx
from .parity import max_abs_error, parity_inputs, torch_step


@dataclass(frozen=True)
class ExportOptions:
    """What to export. Defaults: ONNX fp32, batch sizes 1 and 4, the clip's size."""

    kinds: tuple[str, ...] = ("onnx",)
    roles: tuple[str, ...] = ()  # () = every trained role of the bundle
    batches: tuple[int, ...] = (1, 4)
    size: tuple[int, int] | None = None  # (width, height); None = the bundle's frame size
    precision: str | None = None  # None = per kind: onnx fp32, tensorrt fp16
    opset: int = DEFAULT_OPSET
    dynamo: bool = False  # torch.export-based ONNX exporter instead of the TorchScript one
    max_error: float | None = None  # parity bound; None = sinfusion.engines.PARITY_BOUND
    seed: int = 0  # of the parity inputs

    def check(self, width: int, height: int) -> None:
        """The options' own rules, for engines of width x height; ExportError names the broken one."""
        for kind in self.kinds:
            if kind not in KINDS:
                raise ExportError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not self.kinds:
            raise ExportError("no engine kind requested")
        for role in self.roles:
            if role not in ROLES:
                raise ExportError(f"unknown role {role!r}; valid roles: {', '.join(ROLES)}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ExportError(f"precision must be one of {', '.join(PRECISIONS)}, "
                              f"got {self.precision!r}")
        if self.opset not in OPSETS:
            raise ExportError(f"opset must be in [{OPSETS.start}, {OPSETS.stop - 1}], got {self.opset}")
        if self.max_error is not None and not self.max_error > 0:
            raise ExportError(f"max error must be > 0, got {self.max_error}")
        if not self.batches:
            raise ExportError("no batch size requested")
        self.check_shape(width, height)

    def check_shape(self, width: int, height: int, why: str = "") -> None:
        """Every requested batch at width x height is a shape an engine may take; else ExportError,
        with `why` the size is what it is."""
        try:
            for batch in self.batches:
                validate_shape(batch, height, width)
        except ValueError as exc:
            raise ExportError(f"{exc}{why}") from None

    def engine_size(self, bundle: Bundle) -> tuple[int, int]:
        """(width, height) of the frames the engines serve: the options' size, else the bundle's
        frames' (a Predictor with a margin takes a larger canvas: BundleSampling.sizes)."""
        return self.size or (bundle.manifest.width, bundle.manifest.height)


def _validate(bundle: Bundle, options: ExportOptions) -> tuple[list[str], int, int]:
    width, height = options.engine_size(bundle)
    options.check(width, height)
    roles = list(dict.fromkeys(options.roles)) or bundle.roles
    if not roles:
        raise ExportError(f"{bundle.path}: bundle has no trained roles to export")
    sampling = bundle.sampling()
    for role in roles:
        bundle.role(role)  # BundleError naming the valid or trained roles
        for canvas_height, canvas_width in sampling.sizes(role, height, width):
            if (canvas_height, canvas_width) != (height, width):
                options.check_shape(canvas_width, canvas_height,
                                    " (the frame size plus the bundle's predictor_margin)")
    if "tensorrt" in options.kinds:
        from sinfusion.runtimes.tensorrt_runtime import unavailable_reason

        reason = unavailable_reason()
        if reason:
            raise ExportError(f"cannot build TensorRT engines: {reason}")
    return roles, width, height


def export_bundle(bundle: Bundle, options: ExportOptions = ExportOptions(),
                  log: Callable[[str], None] | None = None) -> list[EngineEntry]:
    """Export, check and record engines; returns the new manifest entries. See the module doc."""
    roles, frame_width, frame_height = _validate(bundle, options)
    sampling = bundle.sampling()
    built: list[tuple[EngineEntry, bytes]] = []
    for role in roles:
        config = bundle.role(role).network
        weights = bundle.weights(role)  # checksum-verified
        rs = sampling[role]
        reference = step_for(config, weights, "fp32")
        # every size the role's steps take: a Predictor with a margin works on a larger canvas,
        # and a Projector whose bundle corrects coarsely with that margin on both
        shapes = [(kind, height, width) for height, width in
                  sampling.sizes(role, frame_height, frame_width) for kind in options.kinds]
        # (precision, batch, height, width): ONNX, shared by both kinds
        graphs: dict[tuple[str, int, int, int], bytes] = {}
        for kind, height, width in shapes:
            precision = options.precision or DEFAULT_PRECISION[kind]
            bound = options.max_error or PARITY_BOUND[precision]
            step = reference if precision == "fp32" else step_for(config, weights, precision)
            for batch in dict.fromkeys(options.batches):
                feed = parity_inputs(config, rs, batch, height, width, options.seed)
                if (precision, batch, height, width) not in graphs:
                    graphs[precision, batch, height, width] = to_onnx(
                        step, config, batch, height, width, options.opset, options.dynamo)
                onnx_bytes = graphs[precision, batch, height, width]
                facts: dict[str, str] = {}
                if kind == "onnx":
                    data, error = onnx_bytes, onnx_parity(onnx_bytes, reference, feed)
                else:
                    data, error, facts = _tensorrt(onnx_bytes, config, batch, height, width,
                                                   precision, reference, feed)
                what = f"{kind} {role} batch {batch} {width}x{height} {precision}"
                if not error <= bound:
                    raise ExportError(f"{what}: parity error {error:.3g} vs PyTorch exceeds the "
                                      f"bound {bound:g}; nothing was written")
                sha = hashlib.sha256(data).hexdigest()
                entry = EngineEntry(role, kind, batch, height, width, precision,
                                    engine_file(role, kind, batch, height, width, precision, sha),
                                    sha, error, **facts)
                built.append((entry, data))
                if log:
                    log(f"{what}: {entry.file} ({len(data) / 1e6:.2f} MB, parity {error:.2e})")
    for entry, data in built:
        atomic_write_bytes(bundle.path / entry.file, data)
    bundle.manifest.engines = merge_entries(bundle.manifest.engines, [e for e, _ in built])
    bundle.save_manifest()
    remove_unlisted(bundle)
    return [e for e, _ in built]


def _tensorrt(onnx_bytes, config, batch, height, width, precision, reference, feed):
    from sinfusion.runtimes.tensorrt_runtime import TensorRTEngine, device_facts

    from .tensorrt_build import build_plan

    plan = build_plan(onnx_bytes, config, batch, height, width, precision)
    engine = TensorRTEngine(plan, config, batch, height, width, "new plan")
    return plan, max_abs_error(engine(feed), torch_step(reference, feed)), device_facts()


def remove_unlisted(bundle: Bundle) -> list[str]:
    """Delete engine files (and temp files of interrupted writes) that the manifest does not list."""
    folder = bundle.path / ENGINES_DIR
    if not folder.is_dir():
        return []
    listed = {e.file for e in engine_entries(bundle)}
    removed = []
    for path in folder.iterdir():
        ours = path.suffix in {f".{s}" for s in SUFFIX.values()} or path.name.endswith(".tmp")
        if path.is_file() and ours and f"{ENGINES_DIR}/{path.name}" not in listed:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed
