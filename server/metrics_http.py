"""The /metrics endpoint: Prometheus text over HTTP, exposed exactly like the gRPC port.

It listens on the server's --host, speaks TLS with the gRPC port's certificate when that has one, and
asks for the same bearer token when one is set (Prometheus: `authorization: {credentials: TOKEN}`
and `scheme: https` in the scrape config). So --host 0.0.0.0 with TLS and a token exposes no
unauthenticated plaintext port, and without them the startup warning names this port too.

Each connection has its own thread with a socket timeout (a stalled client, or one that never
finishes its TLS handshake, cannot hold it for ever) and at most MAX_CONNECTIONS are served at once.
"""

from __future__ import annotations

import hmac
import logging
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("sinfusion.server")

TIMEOUT = 10.0  # seconds a connection may stay silent
MAX_CONNECTIONS = 8


class _Handler(BaseHTTPRequestHandler):
    server_version = "sinfusion-metrics"
    server: _HTTPServer

    def setup(self) -> None:
        self.request.settimeout(TIMEOUT)
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # here, in this connection's thread, not in the accept loop
        super().setup()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self._reply(404, b"not found; metrics are at /metrics\n", "text/plain")
            return
        expected = self.server.expected_auth
        if expected is not None:
            sent = (self.headers.get("Authorization") or "").encode("latin-1", "replace")
            if not hmac.compare_digest(sent, expected):
                self._reply(401, b"missing or invalid bearer token\n", "text/plain",
                            {"WWW-Authenticate": "Bearer"})
                return
        self._reply(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)

    def _reply(self, code: int, body: bytes, kind: str, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        log.debug("metrics %s: " + format, self.address_string(), *args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, family: int, registry: CollectorRegistry, token: str | None,
                 tls: ssl.SSLContext | None) -> None:
        self.address_family = family
        self.registry = registry
        self.expected_auth = f"Bearer {token}".encode() if token else None
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler, bind_and_activate=False)
        try:
            if family == socket.AF_INET6:  # "::" takes IPv4 too, as gRPC's "[::]" does
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True,
                                          do_handshake_on_connect=False)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):  # too many connections: drop this one
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:  # not a traceback on stderr
        log.debug("metrics connection from %s failed", client_address, exc_info=True)


class MetricsEndpoint:
    """A running /metrics endpoint; `port` is the bound port (useful with port 0)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int, token: str | None = None,
                 tls_cert: Path | None = None, tls_key: Path | None = None) -> None:
        bare = host.strip("[]")
        family, _, _, _, address = socket.getaddrinfo(bare or None, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
        tls = None
        if tls_cert is not None:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(str(tls_cert), str(tls_key))
        self._server = _HTTPServer(address, family, registry, token, tls)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
