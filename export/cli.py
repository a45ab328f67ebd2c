"""`sinfusion-export BUNDLE`: write fixed-shape engines into a bundle and list them in its manifest.

    sinfusion-export clip.bundle                         # ONNX fp32, batch 1 and 4, clip size
    sinfusion-export clip.bundle --kind tensorrt         # TensorRT fp16 plans (NVIDIA GPU)
    sinfusion-export clip.bundle --roles projector --batch 1,2,8 --size 256x144

Exit status (sinfusion.io.cli, docs/cli.md): 0 done; 1 the export could not be done (parity over its
bound, no TensorRT); 2 bad command line; 3 the bundle is missing, damaged or lacks a role; 4 the
engines cannot be written; 130 interrupted. Every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import sys

from sinfusion.bundle import Bundle, BundleError
from sinfusion.config import ROLES
from sinfusion.engines import KINDS, PRECISIONS
from sinfusion.io.cli import (EXIT_FAILED, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OUTPUT, Parser,
                              UsageError, fail, int_list, size, usage_failed)

from .errors import ExportError
from .onnx_export import DEFAULT_OPSET, OPSETS
from .pipeline import ExportOptions, export_bundle

PROG = "sinfusion-export"


def _roles(values: list[str]) -> tuple[str, ...]:
    return tuple(r for v in values for r in v.split(",") if r)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Export a SinFusion bundle to fixed-shape engines "
                "(ONNX for ONNX Runtime, TensorRT plans), parity-checked against PyTorch.")
    p.add_argument("bundle", help="bundle folder (written by `trainer train`)")
    p.add_argument("--kind", choices=[*KINDS, "all"], default="onnx",
                   help="engine kind (default onnx; all = onnx and tensorrt)")
    p.add_argument("--roles", nargs="+", default=[], metavar="ROLE",
                   help=f"roles to export, space or comma separated ({', '.join(ROLES)}); "
                        "default: every trained role")
    p.add_argument("--batch", type=int_list, default=(1, 4),
                   help="engine batch sizes, comma separated (default 1,4)")
    p.add_argument("--size", type=size, default=None, metavar="WxH",
                   help="frame size of the engines (default: the bundle's)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="default: fp32 for onnx, fp16 for tensorrt")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset ({OPSETS.start}-{OPSETS.stop - 1}, default {DEFAULT_OPSET})")
    p.add_argument("--max-error", type=float, default=None,
                   help="parity bound, max |engine - PyTorch| (default: 1e-3 fp32, 5e-2 fp16)")
    p.add_argument("--dynamo", action="store_true",
                   help="use torch's torch.export-based ONNX exporter (slower)")
    p.add_argument("--seed", type=int, default=0, help="seed of the parity inputs")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        options = ExportOptions(
            kinds=KINDS if args.kind == "all" else (args.kind,),
            roles=_roles(args.roles),
            batches=args.batch,
            size=args.size,
            precision=args.precision,
            opset=args.opset,
            dynamo=args.dynamo,
            max_error=args.max_error,
            seed=args.seed,
        )
        bundle = Bundle.open(args.bundle)
        try:
            options.check(*options.engine_size(bundle))
        except ExportError as exc:  # the options' own rules: the command line's mistake
            raise UsageError(str(exc)) from None
        entries = export_bundle(bundle, options, log=print)
    except UsageError as exc:
        return usage_failed(PROG, exc)
    except BundleError as exc:
        return fail(PROG, exc, EXIT_INPUT)
    except ExportError as exc:
        return fail(PROG, exc, EXIT_FAILED)
    except OSError as exc:  # e.g. a read-only bundle folder or a full disk
        return fail(PROG, f"cannot write the engines: {exc}", EXIT_OUTPUT)
    except KeyboardInterrupt:
        return fail(PROG, "interrupted; the bundle keeps its previous engines", EXIT_INTERRUPTED)
    print(f"{len(entries)} engine(s) written to {bundle.path / 'engines'}; manifest updated")
    return 0

if __name__ == "__main__":
    sys.exit(main())
