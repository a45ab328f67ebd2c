"""Bearer token and TLS against a real server."""

from __future__ import annotations

import shutil
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sinfusion.server import ServerConfig
from sinfusion.server.background import BackgroundServer
from sinfusion.v1 import sinfusion_pb2 as pb
from sinfusion.v1 import sinfusion_pb2_grpc as pb_grpc
from tests.conftest import bundles_folder

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return bundles_folder(tmp_path_factory.mktemp("models"), tiny={"roles": ("projector",)})


def fast() -> pb.SamplingParams:
    return pb.SamplingParams(steps=2, method=pb.SAMPLING_METHOD_DDIM, correction_steps=0, seed=1)


def test_token_required_on_every_rpc_but_health(models_dir):
    config = ServerConfig(models=models_dir, token=TOKEN, grace=0.5)
    with BackgroundServer(config) as running, grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.SinFusionStub(channel)
        good = [("authorization", f"Bearer {TOKEN}")]
        assert stub.ListModels(pb.ListModelsRequest(), metadata=good).models[0].name == "tiny"
        frames = stub.Generate(pb.GenerateRequest(model="tiny", frames=1, sampling=fast()), metadata=good)
        assert len(list(frames)) == 1
        for metadata, message in ((None, "missing bearer token"),
                                  ([("authorization", "Bearer wrong")], "invalid bearer token"),
                                  ([("authorization", TOKEN)], "invalid bearer token")):
            with pytest.raises(grpc.RpcError) as info:
                stub.ListModels(pb.ListModelsRequest(), metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert message in info.value.details()
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Generate(pb.GenerateRequest(model="tiny", frames=1), metadata=metadata))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Upsample(iter([pb.UpsampleRequest(model="tiny", factor=2)]), metadata=metadata))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Health stays open for load balancers and orchestrators.
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl binary not available to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_tls(models_dir, certificate):
    cert, key = certificate
    config = ServerConfig(models=models_dir, tls_cert=cert, tls_key=key, token=TOKEN, grace=0.5)
    with BackgroundServer(config) as running:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{running.port}", credentials) as channel:
            stub = pb_grpc.SinFusionStub(channel)
            reply = stub.ListModels(pb.ListModelsRequest(), metadata=[("authorization", f"Bearer {TOKEN}")])
            assert reply.models[0].name == "tiny"
        with grpc.insecure_channel(running.target) as channel:  # plaintext to a TLS port fails
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.SinFusionStub(channel).ListModels(pb.ListModelsRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_warns_when_exposed_without_tls_and_token(models_dir, caplog):
    caplog.set_level("WARNING", logger="sinfusion.server")
    with BackgroundServer(ServerConfig(models=models_dir, host="0.0.0.0", grace=0.5)):
        pass
    assert "listening on 0.0.0.0 without TLS and a token" in caplog.text
    caplog.clear()
    with BackgroundServer(ServerConfig(models=models_dir, grace=0.5)):
        pass
    assert "without" not in caplog.text


def test_metrics_endpoint_has_the_grpc_ports_tls_and_token(models_dir, certificate):
    import ssl
    import urllib.error
    import urllib.request

    cert, key = certificate
    config = ServerConfig(models=models_dir, tls_cert=cert, tls_key=key, token=TOKEN, metrics_port=0,
                          grace=0.5)
    with BackgroundServer(config) as running:
        url = f"https://localhost:{running.metrics_port}/metrics"
        context = ssl.create_default_context(cafile=str(cert))
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url, context=context, timeout=10)
        assert info.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, context=context, timeout=10) as reply:
            assert b"sinfusion_live_streams" in reply.read()
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plaintext on that port
            urllib.request.urlopen(f"http://localhost:{running.metrics_port}/metrics", timeout=10)


def test_metrics_endpoint_drops_connections_that_never_speak(models_dir, monkeypatch):
    """A silent client (or one that never finishes a TLS handshake) is timed out; others get served."""
    import socket
    import urllib.request

    from sinfusion.server import metrics_http

    monkeypatch.setattr(metrics_http, "TIMEOUT", 0.5)
    config = ServerConfig(models=models_dir, metrics_port=0, grace=0.5)
    with BackgroundServer(config) as running:
        silent = [socket.create_connection(("127.0.0.1", running.metrics_port)) for _ in range(3)]
        with urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=10) as r:
            assert r.status == 200
        for sock in silent:
            sock.settimeout(5)
            assert sock.recv(1) == b""  # closed by the server after its timeout
            sock.close()
