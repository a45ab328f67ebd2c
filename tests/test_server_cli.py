"""`sinfusion-server` as a subprocess, started exactly as clients' tests start it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from sinfusion.server.process import start_server_process
from sinfusion.v1 import sinfusion_pb2 as pb
from sinfusion.v1 import sinfusion_pb2_grpc as pb_grpc
from tests.conftest import bundles_folder

SCRIPT = Path(sys.executable).parent / "sinfusion-server"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "sinfusion.server.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = bundles_folder(tmp_path_factory.mktemp("models"), tiny={})
    (root / "notes").mkdir()  # a folder without a manifest is not a bundle: ignored
    return root


def fails(*args: str, code: int = 2) -> str:
    """2: the command line; 3: a folder or file it names that cannot be used (sinfusion.io.cli)."""
    result = subprocess.run([*COMMAND, *args], capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_user_mistakes_exit_2_or_3_with_one_line(tmp_path, models_dir):
    assert "--models" in fails("--models", str(tmp_path / "absent"), code=3)
    assert "no bundles" in fails("--models", str(tmp_path), code=3)
    assert "--runtime" in fails("--models", str(models_dir), "--runtime", "fastest")
    assert "--max-streams must be >= 1, got 0" in fails("--models", str(models_dir), "--max-streams", "0")
    assert "--tls-cert and --tls-key must be given together" in fails(
        "--models", str(models_dir), "--tls-cert", str(tmp_path / "c.pem"))
    line = fails("--models", str(models_dir), "--runtime", "onnxruntime-cpu", code=3)
    assert "no runtime can serve it" in line and "onnxruntime-cpu" in line
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    assert "not a PEM file" in fails("--models", str(models_dir), "--tls-cert", str(tmp_path / "c.pem"),
                                     "--tls-key", str(tmp_path / "k.pem"), code=3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert "Address already in use" in fails("--models", str(models_dir), "--port", port)
        assert "--metrics-port" in fails("--models", str(models_dir), "--metrics-port", port)
    broken = tmp_path / "broken" / "b"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{not json")
    assert "not valid JSON" in fails("--models", str(broken.parent), code=3)


def start(models_dir: Path, port_file: Path, *extra: str) -> subprocess.Popen:
    proc, _ = start_server_process(["--models", models_dir, "--host", "127.0.0.1", "--port", "0", *extra],
                                   port_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=ENV)
    return proc


def stream_in_thread(stub, frames: int, results: list, first: threading.Event) -> threading.Thread:
    def run():
        request = pb.ExtrapolateRequest(model="tiny", frames=frames, sampling=pb.SamplingParams(
            steps=2, method=pb.SAMPLING_METHOD_DDIM, correction_steps=1, seed=3))
        try:
            for frame in stub.Extrapolate(request):
                results.append(frame.index)
                first.set()
        except grpc.RpcError as exc:
            results.append(exc.code())
        first.set()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_serve_then_sigterm_drains_live_streams(tmp_path, models_dir):
    port_file = tmp_path / "port"
    proc = start(models_dir, port_file, "--grace", "30")
    try:
        port = int(port_file.read_text())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.SinFusionStub(channel)
            assert [m.name for m in stub.ListModels(pb.ListModelsRequest()).models] == ["tiny"]
            results, first = [], threading.Event()
            thread = stream_in_thread(stub, 40, results, first)
            assert first.wait(60)
            proc.send_signal(signal.SIGTERM)
            thread.join(60)
            assert results == list(range(40))  # the live stream finished during the grace period
        code = proc.wait(60)
        assert code == 0, proc.communicate()[1][-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.communicate()[1]
    assert "stop signal: draining 1 live streams" in stderr
    assert "stream 1 Extrapolate done: 40 frames" in stderr


def test_grace_period_ends_long_streams(tmp_path, models_dir):
    port_file = tmp_path / "port"
    proc = start(models_dir, port_file, "--grace", "0.5")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{int(port_file.read_text())}") as channel:
            results, first = [], threading.Event()
            thread = stream_in_thread(pb_grpc.SinFusionStub(channel), 1000, results, first)
            assert first.wait(60)
            proc.send_signal(signal.SIGTERM)
            thread.join(60)
            assert isinstance(results[-1], grpc.StatusCode) and len(results) < 1000
        code = proc.wait(60)
        assert code == 0, proc.communicate()[1][-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_reports_not_serving_before_the_port_closes(tmp_path, models_dir):
    """Drain with no live stream: health says NOT_SERVING for --drain-delay, then the port closes.
    Also: --host :: (IPv6, no brackets) and the metrics port in its own file, and the warning."""
    import urllib.request

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    metrics_file = tmp_path / "metrics-port"
    proc, port = start_server_process(
        ["--models", models_dir, "--host", "::", "--port", "0", "--metrics-port", "0",
         "--metrics-port-file", metrics_file, "--drain-delay", "2", "--grace", "5"],
        tmp_path / "port", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        with urllib.request.urlopen(f"http://[::1]:{int(metrics_file.read_text())}/metrics",
                                    timeout=10) as reply:
            assert b'sinfusion_bundles{state="served"} 1.0' in reply.read()
        with grpc.insecure_channel(f"[::1]:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != \
                    health_pb2.HealthCheckResponse.NOT_SERVING:
                time.sleep(0.01)
            assert time.monotonic() - signalled < 1.5  # seen while the port is still open
        assert proc.wait(30) == 0
        assert time.monotonic() - signalled >= 2.0  # the drain delay was honoured
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.communicate()[1]
    assert f"metrics on port {metrics_file.read_text().strip()}" in stderr
    assert "without TLS and a token: anyone who can reach this address can use the gRPC port" in stderr
    assert "and /metrics on port" in stderr


def test_second_signal_cuts_the_drain_short(tmp_path, models_dir):
    port_file = tmp_path / "port"
    proc = start(models_dir, port_file, "--grace", "60")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{int(port_file.read_text())}") as channel:
            results, first = [], threading.Event()
            thread = stream_in_thread(pb_grpc.SinFusionStub(channel), 1000, results, first)
            assert first.wait(60)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert proc.poll() is None  # draining: the stream has up to 60 s
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
            thread.join(20)
            assert isinstance(results[-1], grpc.StatusCode) and len(results) < 1000
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "second stop signal: cancelling live streams now" in proc.communicate()[1]
