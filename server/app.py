"""Assembling and running a server: `async with serve(config) as running: ... running.port`.

Loads every bundle once (engines included; bundles that fail are refused and reported, or with
config.strict stop the start), starts one scheduler per model, the gRPC server with the SinFusion
service, standard health checking and reflection, and optionally TLS, a bearer-token check and the
Prometheus endpoint (exposed like the gRPC port). Leaving the block drains (Running.drain): health
turns NOT_SERVING and new calls get UNAVAILABLE while the port stays open for live streams to finish,
for at least config.drain_delay and at most config.grace seconds; then the port closes and what is
left is cancelled.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc

from sinfusion.v1 import sinfusion_pb2 as pb
from sinfusion.v1 import sinfusion_pb2_grpc as pb_grpc

from . import standard
from .auth import TokenInterceptor, tls_credentials
from .config import ConfigError, ServerConfig, connect_host, listen_address
from .metrics import Metrics
from .metrics_http import MetricsEndpoint
from .served import RefusedBundle, ServedModel, load_models
from .scheduler import Scheduler
from .service import SinFusionService
from .wire import DecodeInterceptor

log = logging.getLogger("sinfusion.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SinFusion"].full_name  # "sinfusion.v1.SinFusion"
# gRPC itself refuses requests over --max-message-bytes (RESOURCE_EXHAUSTED, "Received message larger
# than max (N vs. LIMIT)") from the message header, before buffering them: letting them through to
# name the flag in the message cost about 13 MB of RSS per refused 16 MiB request (measured), which
# the allocator kept. server.wire checks the same limit again, unparsed, should it ever be reached.
# Requests of the standard services are tiny; this bounds what a client can make the server parse.
STANDARD_REQUEST_LIMIT = 64 << 10
DRAIN_POLL = 0.05  # seconds between checks for live streams while draining
# Once our streams are done, calls still open get this long: unary calls finish in it, while health
# Watch streams (which never end by themselves) would otherwise hold the shutdown to --grace.
FINAL_GRACE = 1.0


@dataclass
class Running:
    """A started server."""

    port: int
    metrics_port: int | None
    models: dict[str, ServedModel]
    service: SinFusionService
    server: grpc.aio.Server
    health: standard.HealthServicer
    host: str = "127.0.0.1"
    refused: list[RefusedBundle] = field(default_factory=list)
    _hurry: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def target(self) -> str:
        """Where a client on this machine reaches the server."""
        return f"{connect_host(self.host)}:{self.port}"

    @property
    def live_streams(self) -> int:
        return self.service.slots.live

    def hurry(self) -> None:
        """End a drain in progress now (a second stop signal): live streams are cancelled."""
        self._hurry.set()

    async def drain(self, grace: float, delay: float = 0.0) -> None:
        """Health NOT_SERVING and new calls UNAVAILABLE; the port stays open until the live streams
        have finished, for at least `delay` and at most `grace` seconds; then close and cancel."""
        if self._stopped:
            return
        self._stopped = True
        self.service.draining = True
        await self.health.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + grace
        earliest = start + min(delay, grace)
        while not self._hurry.is_set():
            now = loop.time()
            if now >= deadline or (now >= earliest and self.live_streams == 0):
                break
            try:
                await asyncio.wait_for(self._hurry.wait(), DRAIN_POLL)
            except TimeoutError:
                pass
        left = 0.0 if self._hurry.is_set() else max(0.0, deadline - loop.time())
        if self.live_streams:
            log.info("draining: cancelling %d live streams", self.live_streams)
        await self.server.stop(min(left, FINAL_GRACE))


class _ClientGoneFilter(logging.Filter):
    """grpc.aio logs an ExecuteBatchError with a traceback at ERROR when a frame cannot be sent
    because the client went away (cancelled, or stalled then disconnected): the client's doing, not
    a fault here. One INFO line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and type(record.exc_info[1]).__name__ == "ExecuteBatchError":
            record.msg, record.args = "%s: the client went away while a message was being sent", \
                (record.getMessage(),)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_client_gone() -> None:
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(f, _ClientGoneFilter) for f in grpc_log.filters):
        grpc_log.addFilter(_ClientGoneFilter())


def _build_server(config: ServerConfig, service_hook) -> grpc.aio.Server:
    limit = config.max_message_bytes
    decode = DecodeInterceptor({f"/{SERVICE_NAME}/": config.max_message_bytes,
                                "/": STANDARD_REQUEST_LIMIT}, service_hook)
    # The token check runs first: an unauthenticated caller learns nothing about its bytes.
    interceptors = ([TokenInterceptor(config.token)] if config.token else []) + [decode]
    return grpc.aio.server(
        interceptors=interceptors,
        options=[("grpc.max_receive_message_length", limit),
                 ("grpc.max_send_message_length", -1),
                 ("grpc.so_reuseport", 0)],
    )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _warn_exposure(config: ServerConfig, port: int, metrics_port: int | None) -> None:
    if _loopback(config.host) or (config.tls_cert and config.token):
        return
    missing = " and ".join(n for n, on in (("TLS", config.tls_cert), ("a token", config.token)) if not on)
    ports = f"gRPC port {port}" + (f" and /metrics on port {metrics_port} (same policy)"
                                   if metrics_port is not None else "")
    log.warning("listening on %s without %s: anyone who can reach this address can use the %s",
                config.host, missing, ports)


@asynccontextmanager
async def serve(config: ServerConfig, models: dict[str, ServedModel] | None = None
                ) -> AsyncIterator[Running]:
    """Run a server for the block's duration. `models` skips loading (benchmarks reuse engines)."""
    config.validate()
    _quiet_client_gone()
    refused: list[RefusedBundle] = []
    if models is None:
        # Engines load in a thread: a big bundle must not stall an event loop that may run other work.
        models, refused = await asyncio.to_thread(load_models, config.models, config.runtime,
                                                  config.max_batch, config.strict,
                                                  config.compile_cache)
    metrics = Metrics()
    metrics.bundles.labels("served").set(len(models))
    metrics.bundles.labels("refused").set(len(refused))
    for model in models.values():
        model.scheduler = Scheduler(model.name, model.runtime, config.fixed_batch,
                                    metrics.batch_hook(model.name, model.runtime.name))
        model.scheduler.start()
    service = SinFusionService(models, config, metrics, refused)
    server = _build_server(config, service.refused_on_the_wire)
    pb_grpc.add_SinFusionServicer_to_server(service, server)
    health = standard.add_health(server)
    standard.add_reflection(server, (SERVICE_NAME, standard.HEALTH_SERVICE))
    metrics_endpoint = None
    running = None
    try:
        address = listen_address(config.host, config.port)
        try:
            if config.tls_cert is not None:
                port = server.add_secure_port(address, tls_credentials(config.tls_cert, config.tls_key))
            else:
                port = server.add_insecure_port(address)
        except (RuntimeError, OSError, ValueError) as exc:  # port taken, unreadable or bad PEM files
            raise ConfigError(f"cannot listen on {address}: {exc}") from None
        if port == 0:
            raise ConfigError(f"cannot listen on {address}")
        await server.start()
        for name in ("", SERVICE_NAME):
            await health.set(name, standard.SERVING)
        for name in models:
            await health.set(standard.model_health_name(SERVICE_NAME, name), standard.SERVING)
        for bad in refused:
            if bad.name not in models:
                await health.set(standard.model_health_name(SERVICE_NAME, bad.name),
                                 standard.NOT_SERVING)
        metrics_port = None
        if config.metrics_port is not None:
            try:
                metrics_endpoint = await asyncio.to_thread(
                    MetricsEndpoint, metrics.registry, config.host, config.metrics_port,
                    config.token, config.tls_cert, config.tls_key)
            except OSError as exc:
                raise ConfigError(f"--metrics-port {config.metrics_port}: {exc}") from None
            metrics_port = metrics_endpoint.port
        log.info("listening on %s (%s%s), models: %s%s%s", address.rsplit(":", 1)[0] + f":{port}",
                 "TLS" if config.tls_cert else "plaintext", ", token required" if config.token else "",
                 ", ".join(sorted(models)),
                 f"; refused bundles: {len(refused)} (see above)" if refused else "",
                 f"; metrics on port {metrics_port}" if metrics_port is not None else "")
        _warn_exposure(config, port, metrics_port)
        running = Running(port, metrics_port, models, service, server, health, config.host, refused)
        yield running
    finally:
        try:
            if running is not None:
                await running.drain(config.grace, config.drain_delay)
            else:
                await server.stop(0)
        finally:
            for model in models.values():
                if model.scheduler is not None:
                    await model.scheduler.close()
            if metrics_endpoint is not None:
                metrics_endpoint.close()
            log.info("server stopped")
