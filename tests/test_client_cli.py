"""The client and its CLI without a server: imports without torch, usage errors, a server that is down."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sinfusion.clients import ConnectionOptions, Sampling
from sinfusion.clients import cli_size
from sinfusion.clients.cli import EXIT_BUG, EXIT_INPUT, EXIT_OUTPUT, EXIT_USAGE, exit_code, main
from sinfusion.clients.cli_io import open_source
from sinfusion.clients.errors import ClientError
from sinfusion.clients.messages import extrapolate_request, frame_from_proto, raw_frame
from sinfusion.io.cli import InputError
from sinfusion.v1 import sinfusion_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, stdin: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sinfusion.clients", *args], input=stdin, capture_output=True,
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
        import sinfusion.clients.cli, sinfusion.clients.cli_io
        from sinfusion.clients import AsyncClient, Client, Sampling
        code = sinfusion.clients.cli.main(["--address", "127.0.0.1:1", "models"])
        assert code == 114, code
        # The client's boundary: the wire stubs and sinfusion.io, nothing else of the core.
        core = [m for m in sys.modules if m.split(".")[0] == "sinfusion"]
        beyond = [m for m in core if m != "sinfusion" and m.split(".")[1] not in ("clients", "v1", "io")]
        assert any(m.startswith("sinfusion.clients.") for m in core) and not beyond, beyond
        import sinfusion.video  # the clip reader stays torch-free as well
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
    (["upsample", "--model", "m", "--factor", "2", "--size", "100000x100000"],
     "--size: frame size 100000x100000 is 10000000000 pixels, over the limit of 16777216"),
    (["extrapolate", "--model", "m", "--frames", "2", "--output-size", "input"],
     "--output-size is only used with --start-from-input"),
    (["extrapolate", "--model", "m", "--frames", "2", "--start-frame", "1", "--start-from-input"],
     "not allowed with argument"),
    (["generate", "--model", "m", "--frames", "1", "--steps", "-1"], "--steps: must be an integer >= 0"),
    (["generate", "--model", "m", "--frames", "1", "--paper-sampler", "--method", "ddim"],
     "--paper-sampler sets --steps, --method and --correction-steps; give it or them, not both (got --method)"),
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
    # Unset fields are the server's defaults (DDIM, its steps, the model's T_corr); paper() is explicit.
    assert Sampling().to_proto() == pb.SamplingParams()
    paper = Sampling.paper(seed=1).to_proto()
    assert (paper.steps, paper.method, paper.correction_steps, paper.seed) == (
        0, pb.SAMPLING_METHOD_DDPM, 3, 1) and paper.HasField("steps")
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


@pytest.mark.parametrize("stdin,match", [
    (b"YUV4MPEG2 W100000 H100000 F25:1\nFRAME\n", "stdin: y4m header: frame size 100000x100000 is 10000000000 "
                                                  "pixels, over the limit of 16777216"),
    (b"YUV4MPEG2 W24 H16 F25:1\n", "stdin (y4m 24x16): no frames (the input ends before its first frame); "
                                  "upsample needs at least one"),
    (b"", "stdin is empty"),
])
def test_bad_input_is_one_line_exit_3_before_connecting(stdin, match):
    port = free_port()  # nobody listens: the input is read, and refused, before the server is asked
    proc = cli("--address", f"127.0.0.1:{port}", "upsample", "--model", "m", "--factor", "2", "--format", "raw",
               stdin=stdin)
    err = proc.stderr.decode()
    assert proc.returncode == EXIT_INPUT, err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err and proc.stdout == b""


def test_deadline_exceeded_names_the_address():
    with socket.socket() as silent:  # accepts TCP connections (the backlog) but never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        proc = cli("--address", address, "--timeout", "0.5", "models")
    err = proc.stderr.decode()
    assert proc.returncode == 104, err
    assert err.count("\n") == 1 and "DEADLINE_EXCEEDED" in err
    assert f"{address} did not answer within --timeout 0.5 s" in err


def test_a_status_without_details_is_not_a_repr():
    import grpc

    class Bare(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.NOT_FOUND

        def details(self):
            return None

        def __str__(self):
            return "<_InactiveRpcError of RPC that terminated with:\n\tstatus = StatusCode.NOT_FOUND>"

    err = ClientError.from_rpc(Bare())
    assert str(err) == "NOT_FOUND: (the server gave no details)" and err.code == grpc.StatusCode.NOT_FOUND


def test_an_unexpected_exception_is_one_line_exit_1(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise MemoryError("cannot allocate")

    monkeypatch.setattr("sinfusion.clients.cli.open_source", broken)
    code = main(["--address", f"127.0.0.1:{free_port()}", "upsample", "--model", "m", "--factor", "2"])
    err = capsys.readouterr().err
    assert code == EXIT_BUG == 1
    assert err == "sinfusion: internal error, a bug in the client: MemoryError: cannot allocate\n"


def test_size_plan_and_its_notice():
    model = (24, 16)
    same = cli_size.plan(model, (24, 16), None, "resize", raw_stdout=True, model_name="m")
    assert same.output == model and not same.stretched and cli_size.notice(same, "m") is None
    assert cli_size.plan(model, None, None, "resize", True, "m").output == model  # generate: no input
    refused = cli_size.plan(model, (48, 32), None, "refuse", True, "m")  # the server refuses it itself
    assert not refused.stretched and cli_size.notice(refused, "m") is None
    with pytest.raises(cli_size.SizeChoiceError, match=r"raw RGB24 output would be 24x16, the size of model "
                                                       r"'m', but the input is 48x32.*--output-size input"):
        cli_size.plan(model, (48, 32), None, "resize", raw_stdout=True, model_name="m")
    y4m = cli_size.plan(model, (48, 32), None, "resize", raw_stdout=False, model_name="m")
    assert y4m.output == model and y4m.stretched and not y4m.resize_back
    assert cli_size.notice(y4m, "m") == (
        "input is 48x32, model 'm' takes 24x16: the server resizes input frames from 48x32 to 24x16 by --resize "
        "resize (Lanczos, aspect ratio not kept; --resize refuse refuses them); output is 24x16 "
        "(--output-size input resizes it back to 48x32)")
    back = cli_size.plan(model, (48, 32), "input", "resize", raw_stdout=True, model_name="m")
    assert back.output == (48, 32) and back.resize_back
    assert "output frames are resized back to 48x32 here" in cli_size.notice(back, "m")
    kept = cli_size.plan(model, (48, 32), "model", "resize", raw_stdout=True, model_name="m")
    assert kept.output == model and not kept.resize_back
    assert "'" + "n" * 64 + "'... (300 characters)" in cli_size.notice(
        cli_size.plan(model, (48, 32), None, "resize", False, "n" * 300), "n" * 300)


def test_resized_frames_keep_their_index_and_flags():
    from sinfusion.clients.messages import Frame

    image = np.zeros((16, 24, 3), np.uint8)
    frames = list(cli_size.resized([Frame(3, image, True, True), Frame(4, image[:8, :12], False, True)], (48, 32)))
    assert [(f.index, f.synthesized, f.width, f.height) for f in frames] == [(3, True, 48, 32), (4, False, 48, 32)]
    assert all(f.image.dtype == np.uint8 for f in frames)


def test_closed_stdin_or_stdout_is_one_line():
    port = free_port()
    base = [sys.executable, "-m", "sinfusion.clients", "--address", f"127.0.0.1:{port}"]
    closed_in = subprocess.run(base + ["upsample", "--model", "m", "--factor", "2", "--format", "raw"],
                               stdin=subprocess.DEVNULL, capture_output=True, cwd=ROOT, timeout=60,
                               preexec_fn=lambda: os.close(0))
    assert closed_in.returncode == EXIT_INPUT and closed_in.stderr.decode() == (
        "sinfusion: stdin is closed: pipe frames in or give --input FILE\n")
    closed_out = subprocess.run(base + ["generate", "--model", "m", "--frames", "1"], stderr=subprocess.PIPE,
                                cwd=ROOT, timeout=60, preexec_fn=lambda: os.close(1))
    assert closed_out.returncode == EXIT_OUTPUT and closed_out.stderr.decode() == (
        "sinfusion: output: stdout is closed: give --output FILE\n")
