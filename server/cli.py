"""`sinfusion-server`: serve a folder of bundles over gRPC until SIGTERM/SIGINT.

    sinfusion-server --models DIR [--host 127.0.0.1] [--port 0] [--port-file PATH] [--runtime auto]
                     [--max-streams N] [--max-frames N] [--max-message-bytes N] [--metrics-port N]
                     [--metrics-port-file PATH] [--tls-cert F --tls-key F] [--token T] [--grace S]
                     [--drain-delay S] [--strict]

Mistakes end with one line on stderr: a bad flag or a port in use exits 2; a models folder with no
servable bundle (with --strict: any bundle that cannot be served) or an unusable TLS file exits 3
(sinfusion.io.cli, docs/cli.md). On SIGTERM or SIGINT the server drains (server.app):
health NOT_SERVING, new calls UNAVAILABLE, live streams get --grace seconds; a second signal cuts the
drain short. Then it exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from sinfusion.io.atomic import atomic_write_bytes
from sinfusion.io.cli import Parser, UsageError, fail, usage_failed

from .app import serve
from .config import RUNTIME_CHOICES, ConfigError, ServerConfig, probe_port

PROG = "sinfusion-server"


def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig(models=Path("."))
    p = Parser(prog=PROG, description="Serve SinFusion bundles over gRPC (sinfusion.v1).")
    p.add_argument("--models", type=Path, required=True,
                   help="folder whose subfolders are bundles (or one bundle folder)")
    p.add_argument("--host", default=d.host, help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="port; 0 picks a free one (default 0)")
    p.add_argument("--port-file", type=Path, help="write the bound port here (atomically) once serving")
    p.add_argument("--runtime", default=d.runtime, choices=RUNTIME_CHOICES, metavar="RUNTIME",
                   help=f"engine runtime: {', '.join(RUNTIME_CHOICES)} (default auto: best available "
                        "per bundle)")
    p.add_argument("--max-streams", type=int, default=d.max_streams,
                   help="concurrent streaming RPCs (default %(default)s)")
    p.add_argument("--max-frames", type=int, default=d.max_frames,
                   help="frames per Extrapolate/Generate request (default %(default)s)")
    p.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes,
                   help="largest request message (default %(default)s)")
    p.add_argument("--max-batch", type=int, default=d.max_batch,
                   help="largest batch for runtimes without fixed engine sizes (default %(default)s)")
    p.add_argument("--compile-cache", type=Path, metavar="DIR",
                   help="torch-cuda's compile cache, kept across restarts (default: "
                        "$TORCHINDUCTOR_CACHE_DIR, else ~/.cache/sinfusion/inductor)")
    p.add_argument("--fixed-batch", action="store_true",
                   help="pad every engine call to the largest batch: seeded streams are bit-identical "
                        "alone or batched, at the cost of compute when few streams are live")
    p.add_argument("--metrics-port", type=int,
                   help="serve Prometheus /metrics on this port (0 picks a free one), on --host with "
                        "the gRPC port's TLS and token")
    p.add_argument("--metrics-port-file", type=Path,
                   help="write the bound metrics port here (atomically) once serving")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain (with --tls-key)")
    p.add_argument("--tls-key", type=Path, help="PEM private key (with --tls-cert)")
    p.add_argument("--token", help="require 'authorization: Bearer TOKEN' (default: env SINFUSION_TOKEN)")
    p.add_argument("--grace", type=float, default=d.grace,
                   help="seconds live streams get to finish on SIGTERM (default %(default)s)")
    p.add_argument("--drain-delay", type=float, default=1.0,
                   help="seconds the port stays open answering health NOT_SERVING after SIGTERM, even "
                        "with no live stream, so load balancers notice (at most --grace; default "
                        "%(default)s)")
    p.add_argument("--strict", action="store_true",
                   help="exit 3 if any bundle cannot be served (default: serve the others and report "
                        "the refused ones in the log, health and DescribeModel)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


async def _run(config: ServerConfig, port_file: Path | None, metrics_port_file: Path | None) -> int:
    log = logging.getLogger("sinfusion.server")
    stop = asyncio.Event()
    running = None

    def on_signal() -> None:
        if not stop.is_set():
            stop.set()
        elif running is not None:
            log.info("second stop signal: cancelling live streams now")
            running.hurry()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    async with serve(config) as running:
        if metrics_port_file is not None and running.metrics_port is not None:
            atomic_write_bytes(metrics_port_file, f"{running.metrics_port}\n".encode())
        if port_file is not None:  # last: scripts take it to mean "serving"
            atomic_write_bytes(port_file, f"{running.port}\n".encode())
        await stop.wait()
        log.info("stop signal: draining %d live streams (health NOT_SERVING, at least %g s, at most "
                 "%g s); a second signal cancels them now", running.live_streams,
                 min(config.drain_delay, config.grace), config.grace)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return usage_failed(PROG, exc)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = args.token if args.token is not None else os.environ.get("SINFUSION_TOKEN") or None
    config = ServerConfig(
        models=args.models, host=args.host, port=args.port, runtime=args.runtime,
        max_streams=args.max_streams, max_frames=args.max_frames,
        max_message_bytes=args.max_message_bytes, max_batch=args.max_batch,
        fixed_batch=args.fixed_batch, metrics_port=args.metrics_port, tls_cert=args.tls_cert,
        tls_key=args.tls_key, token=token, grace=args.grace, drain_delay=args.drain_delay,
        strict=args.strict, compile_cache=args.compile_cache,
    )
    try:
        config.validate()
        probe_port(config.host, config.port, "--port")
        if config.metrics_port is not None:
            probe_port(config.host, config.metrics_port, "--metrics-port")
        if args.metrics_port_file is not None and config.metrics_port is None:
            raise ConfigError("--metrics-port-file needs --metrics-port")
        return asyncio.run(_run(config, args.port_file, args.metrics_port_file))
    except ConfigError as exc:
        return fail(PROG, exc, exc.exit_code)


if __name__ == "__main__":
    sys.exit(main())
