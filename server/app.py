"""Assembling and running a server: `async with serve(config) as running: ... running.port`.

Loads every bundle once (engines included), starts one scheduler per model, the gRPC server with the
SinFusion service, standard health checking and reflection, and optionally TLS, a bearer-token check
and the Prometheus endpoint. Leaving the block drains: health turns NOT_SERVING, new RPCs are refused
and live streams get `config.grace` seconds to finish before they are cancelled.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sinfusion.v1 import sinfusion_pb2 as pb
from sinfusion.v1 import sinfusion_pb2_grpc as pb_grpc

from .auth import TokenInterceptor, tls_credentials
from .config import ConfigError, ServerConfig
from .metrics import Metrics
from .models import ServedModel, load_models
from .scheduler import Scheduler
from .service import SinFusionService

log = logging.getLogger("sinfusion.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SinFusion"].full_name  # "sinfusion.v1.SinFusion"
# gRPC's own receive limit sits this far above --max-message-bytes, so that oversized requests up to
# it reach the service and get a message naming the limit; beyond it gRPC answers RESOURCE_EXHAUSTED.
TRANSPORT_SLACK = 1 << 20


@dataclass
class Running:
    """A started server."""

    port: int
    metrics_port: int | None
    models: dict[str, ServedModel]
    service: SinFusionService
    server: grpc.aio.Server
    health: health.aio.HealthServicer

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def live_streams(self) -> int:
        return self.service.slots.live

    async def stop(self, grace: float | None) -> None:
        """Refuse new RPCs, give live ones `grace` seconds, then cancel them."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def _build_server(config: ServerConfig) -> grpc.aio.Server:
    limit = config.max_message_bytes + TRANSPORT_SLACK
    interceptors = [TokenInterceptor(config.token)] if config.token else []
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


@asynccontextmanager
async def serve(config: ServerConfig, models: dict[str, ServedModel] | None = None
                ) -> AsyncIterator[Running]:
    """Run a server for the block's duration. `models` skips loading (benchmarks reuse engines)."""
    config.validate()
    if models is None:
        # Engines load in a thread: a big bundle must not stall an event loop that may run other work.
        models = await asyncio.to_thread(load_models, config.models, config.runtime, config.max_batch)
    metrics = Metrics()
    for model in models.values():
        model.scheduler = Scheduler(model.name, model.runtime, config.fixed_batch,
                                    metrics.batch_hook(model.name, model.runtime.name))
        model.scheduler.start()
    service = SinFusionService(models, config, metrics)
    server = _build_server(config)
    pb_grpc.add_SinFusionServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    metrics_port = None
    try:
        address = f"{config.host}:{config.port}"
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
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        if config.metrics_port is not None:
            try:
                metrics_port = metrics.serve_http(config.host, config.metrics_port)
            except OSError as exc:
                raise ConfigError(f"--metrics-port {config.metrics_port}: {exc}") from None
        log.info("listening on %s:%d (%s%s), models: %s%s", config.host, port,
                 "TLS" if config.tls_cert else "plaintext", ", token required" if config.token else "",
                 ", ".join(sorted(models)),
                 f", metrics on :{metrics_port}" if metrics_port is not None else "")
        if not _loopback(config.host) and not (config.tls_cert and config.token):
            log.warning("listening on %s without %s: anyone who can reach this address can use "
                        "the server", config.host,
                        " and ".join(n for n, on in (("TLS", config.tls_cert), ("a token", config.token))
                                     if not on))
        running = Running(port, metrics_port, models, service, server, health_servicer)
        yield running
    finally:
        try:
            await health_servicer.enter_graceful_shutdown()
        except Exception:  # pragma: no cover  (best effort while shutting down)
            pass
        await server.stop(config.grace)
        for model in models.values():
            await model.scheduler.close()
        metrics.close()
        log.info("server stopped")
