"""Regenerate the Python gRPC stubs from protos/: `python tools/gen_protos.py`.

Writes sinfusion/v1/sinfusion_pb2.py, _pb2.pyi and _pb2_grpc.py. tests/test_protos.py fails when the
committed stubs differ from what this produces.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO = "sinfusion/v1/sinfusion.proto"


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{ROOT / 'protos'}", f"-I{include}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", str(ROOT / "protos" / PROTO)]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(ROOT)
    print(f"regenerated stubs for {PROTO}", file=sys.stderr)
