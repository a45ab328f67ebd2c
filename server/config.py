"""The server's settings: one dataclass, filled by the CLI (server.cli) or by tests and benchmarks."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from sinfusion.io.cli import EXIT_INPUT, EXIT_USAGE

# Best first: the order `--runtime auto` tries for each bundle (DESIGN.md, "Engines and runtimes").
# torch-cuda is the compiled, graph-captured runtime (sinfusion/runtimes/torch_compiled.py, docs/gpu.md);
# torch-cuda-eager, the plain fp32 PyTorch step on CUDA, is only used when forced (the reference).
RUNTIME_ORDER = ("tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu", "torch-cpu")
FORCED_ONLY = ("torch-cuda-eager",)
RUNTIME_CHOICES = ("auto", *RUNTIME_ORDER, *FORCED_ONLY)


class ConfigError(ValueError):
    """A setting the server cannot start with. `exit_code` follows sinfusion.io.cli: EXIT_USAGE for
    the command line itself, EXIT_INPUT for a folder or file it names that cannot be used."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class ServerConfig:
    models: Path  # a folder of bundle folders (or one bundle folder)
    host: str = "127.0.0.1"
    port: int = 0  # 0: the OS picks a free port; Running.port tells which
    runtime: str = "auto"  # one of RUNTIME_CHOICES
    max_streams: int = 16  # concurrent streaming RPCs (all models together)
    max_frames: int = 1000  # Extrapolate/Generate `frames` upper bound
    max_message_bytes: int = 16 << 20  # largest request message accepted
    max_batch: int = 8  # largest batch for runtimes without fixed engine sizes (PyTorch)
    fixed_batch: bool = False  # pad every engine call to the role's largest batch (bit-exact seeds)
    metrics_port: int | None = None  # Prometheus /metrics on this port (0: any free port); None: off
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token: str | None = None  # bearer token required on every RPC but health checks; None: off
    grace: float = 10.0  # seconds live streams get to finish on shutdown
    # Seconds the port stays open after a stop, answering health NOT_SERVING, even with no stream
    # live: time for load balancers to see it (capped by grace). The CLI's default is 1; in
    # process (tests, benchmarks) nobody probes.
    drain_delay: float = 0.0
    strict: bool = False  # any bundle that cannot be served stops the server (default: serve the rest)
    # torch-cuda's compile cache (inductor's, process-wide); None: $TORCHINDUCTOR_CACHE_DIR, else
    # ~/.cache/sinfusion/inductor. A warm cache turns minutes of compiling at start into seconds.
    compile_cache: Path | None = None

    def validate(self) -> None:
        """Check what can be checked before loading anything; raises ConfigError with one line."""
        if self.runtime not in RUNTIME_CHOICES:
            raise ConfigError(f"--runtime must be one of {', '.join(RUNTIME_CHOICES)}, got {self.runtime!r}")
        for name, value, low in (("--max-streams", self.max_streams, 1), ("--max-frames", self.max_frames, 1),
                                 ("--max-message-bytes", self.max_message_bytes, 1024),
                                 ("--max-batch", self.max_batch, 1)):
            if value < low:
                raise ConfigError(f"{name} must be >= {low}, got {value}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be in [0, 65535], got {self.port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port must be in [0, 65535], got {self.metrics_port}")
        if self.grace < 0:
            raise ConfigError(f"--grace must be >= 0 seconds, got {self.grace}")
        if self.drain_delay < 0:
            raise ConfigError(f"--drain-delay must be >= 0 seconds, got {self.drain_delay:g}")
        if not self.host.strip("[]"):
            raise ConfigError("--host must not be empty (0.0.0.0 or :: listen on every address)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key must be given together")
        for name, path, marker in (("--tls-cert", self.tls_cert, b"-----BEGIN CERTIFICATE-----"),
                                   ("--tls-key", self.tls_key, b"PRIVATE KEY-----")):
            if path is None:
                continue
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise ConfigError(f"{name} {path}: cannot read ({exc.strerror})", EXIT_INPUT) from None
            if marker not in data:
                raise ConfigError(f"{name} {path}: not a PEM file (no {marker.decode()!r})", EXIT_INPUT)
        if self.token is not None and not self.token.strip():
            raise ConfigError("--token must not be empty")


def _is_ipv6(host: str) -> bool:
    return ":" in host.strip("[]")


def listen_address(host: str, port: int) -> str:
    """host:port as gRPC takes it: IPv6 literals in brackets ("::" -> "[::]:50051")."""
    bare = host.strip("[]")
    return f"[{bare}]:{port}" if _is_ipv6(bare) else f"{bare}:{port}"


def connect_host(host: str) -> str:
    """Where a local client reaches a server listening on `host` (wildcards -> loopback)."""
    bare = host.strip("[]")
    if bare == "0.0.0.0":
        return "127.0.0.1"
    if bare == "::":
        return "[::1]"
    return f"[{bare}]" if _is_ipv6(bare) else bare


def probe_port(host: str, port: int, flag: str) -> None:
    """Fail early, with one line, when a fixed port cannot be bound (taken, or a bad host)."""
    if port == 0:
        return
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: cannot resolve ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        try:
            sock.bind(address)
        except OSError as exc:
            raise ConfigError(f"{flag} {port}: cannot listen on {host}:{port} ({exc.strerror})") from None
