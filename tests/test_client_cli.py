"""The client and its CLI without a server: imports without torch, usage errors, a server that is down."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from clients import ConnectionOptions, Sampling
from clients.cli import EXIT_OUTPUT, EXIT_USAGE, exit_code
from clients.cli_io import InputError, open_source
from clients.messages import extrapolate_request, frame_from_proto, raw_frame
from clients.errors import ClientError
from sinfusion.v1 import sinfusion_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, stdin: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clients", *args], input=stdin, capture_output=True,
                          cwd=ROOT, timeout=timeout)


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_imports_and_runs_without_torch():
    code = textwrap.dedent("""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, NoTorch())
        import clients, clients.cli, clients.cli_io, sinfusion.pipes, sinfusion.video
        from clients import AsyncClient, Client, Sampling
        code = clients.cli.main(["--address", "127.0.0.1:1", "models"])
        assert code == 114, code
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "ok"


def test_server_down_is_one_line_with_the_unavailable_code():
    port = free_port()
    for args in (["models"], ["generate", "--model", "m", "--frames", "2", "--format", "raw"]):
        proc = cli("--address", f"127.0.0.1:{port}", *args)
        err = proc.stderr.decode()
        assert proc.returncode == 114 == exit_code(__import__("grpc").StatusCode.UNAVAILABLE), err
        assert err.count("\n") == 1 and "UNAVAILABLE" in err and f"127.0.0.1:{port}" in err
        assert "Traceback" not in err and proc.stdout == b""


@pytest.mark.parametrize("args,match", [
    (["generate", "--model", "m", "--frames", "0"], "--frames: must be an integer >= 1, got '0'"),
    (["upsample", "--model", "m", "--factor", "3"], "invalid choice: 3"),
    (["upsample", "--model", "m", "--factor", "2", "--size", "12"], "WIDTHxHEIGHT"),
    (["extrapolate", "--model", "m", "--frames", "2", "--start-frame", "1", "--start-from-input"],
     "not allowed with argument"),
    (["generate", "--model", "m", "--frames", "1", "--steps", "-1"], "--steps: must be an integer >= 0"),
    (["--timeout", "0", "models"], "--timeout: must be a finite number > 0"),
    ([], "required: COMMAND"),
])
def test_usage_errors_are_one_line_exit_2(args, match):
    proc = cli(*args)
    err = proc.stderr.decode()
    assert proc.returncode == EXIT_USAGE, err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_output_and_input_fail_before_connecting(tmp_path):
    port = free_port()  # nobody listens: these must fail on their own, not with UNAVAILABLE
    proc = cli("--address", f"127.0.0.1:{port}", "generate", "--model", "m", "--frames", "1", "-o",
               str(tmp_path / "out.avi"))
    assert proc.returncode == EXIT_OUTPUT and "unsupported output suffix .avi" in proc.stderr.decode()
    proc = cli("--address", f"127.0.0.1:{port}", "generate", "--model", "m", "--frames", "1", "-o",
               str(tmp_path / "no" / "out.mp4"))
    assert proc.returncode == EXIT_OUTPUT and "does not exist" in proc.stderr.decode()


def test_open_source_errors(tmp_path):
    with pytest.raises(InputError, match="stdin is empty"):
        open_source(None, None, None, stdin=io.BytesIO(b""))
    with pytest.raises(InputError, match=r"not a y4m stream \(it starts with b'\\x00\\x01"):
        open_source(None, None, None, stdin=io.BytesIO(bytes(range(40))))
    src = open_source(None, (2, 2), 5.0, stdin=io.BytesIO(bytes(range(24))))
    assert [f.shape for f in src.frames] == [(2, 2, 3), (2, 2, 3)] and src.fps == 5.0
    with pytest.raises(InputError, match="no such file"):
        open_source(str(tmp_path / "missing.mp4"), None, None)
    (tmp_path / "frames.rgb").write_bytes(bytes(12))
    with pytest.raises(InputError, match="needs --size"):
        open_source(str(tmp_path / "frames.rgb"), None, None)
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(InputError, match="bad.mp4"):
        open_source(str(tmp_path / "bad.mp4"), None, None)


def test_messages_roundtrip_and_validation():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    raw = raw_frame(img)
    assert (raw.width, raw.height, raw.rgb) == (3, 2, img.tobytes())
    with pytest.raises(ValueError, match="uint8 \\(H, W, 3\\)"):
        raw_frame(img.astype(np.float32))
    frame = frame_from_proto(pb.Frame(index=4, width=3, height=2, rgb=img.tobytes(), synthesized=True))
    assert frame.index == 4 and frame.synthesized and np.array_equal(frame.image, img)
    with pytest.raises(ClientError, match="PROTOCOL: server sent frame 0 of 3x2 with 5 bytes"):
        frame_from_proto(pb.Frame(width=3, height=2, rgb=b"12345"))
    req = extrapolate_request("m", 3, step=-2, start_image=img, sampling=Sampling(method="ddim", seed=0))
    assert req.WhichOneof("start") == "start_image" and req.sampling.HasField("seed")
    assert not req.sampling.HasField("correction_steps")
    assert extrapolate_request("m", 3).start_frame == 0
    with pytest.raises(ValueError, match="method must be one of ddpm, ddim"):
        Sampling(method="euler").to_proto()
    with pytest.raises(ValueError, match="not both"):
        extrapolate_request("m", 1, start_frame=1, start_image=img)


def test_connection_options():
    assert ConnectionOptions(token="abc").metadata == (("authorization", "Bearer abc"),)
    assert ConnectionOptions().metadata == ()
    with pytest.raises(ValueError, match="timeouts must be > 0"):
        ConnectionOptions(timeout=0)
    with pytest.raises(ValueError, match="tls_ca /nonexistent.pem: cannot read"):
        ConnectionOptions(tls_ca="/nonexistent.pem").channel()
