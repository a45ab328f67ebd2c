"""The committed gRPC stubs in sinfusion/v1 are exactly what tools/gen_protos.py generates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUBS = ("sinfusion_pb2.py", "sinfusion_pb2.pyi", "sinfusion_pb2_grpc.py")


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "tools" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    load_generator().generate(tmp_path)
    for name in STUBS:
        fresh = (tmp_path / "sinfusion" / "v1" / name).read_text()
        committed = (ROOT / "sinfusion" / "v1" / name).read_text()
        assert fresh == committed, (f"sinfusion/v1/{name} is stale: run "
                                    f"`.venv/bin/python tools/gen_protos.py` and commit the result")
