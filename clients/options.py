"""How a client reaches a server: address, TLS, bearer token, deadlines; channel construction."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
# Frames are single messages: 64 MiB holds a 4K RGB24 frame (25 MB) with room to spare; the server
# keeps its own limit and answers RESOURCE_EXHAUSTED above it.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class ConnectionOptions:
    """Where the server is and how to talk to it.

    address: "host:port" (anything grpc accepts, e.g. "dns:///name:port", "unix:/path").
    tls: use TLS; with `tls_ca` the server's certificate must chain to that PEM file, without it to the
        system roots. `tls_ca` alone implies `tls`.
    token: bearer token sent as `authorization: Bearer <token>` on every call.
    timeout: seconds allowed for a unary call (ListModels, DescribeModel).
    stream_timeout: seconds allowed for a whole streaming call; None = no deadline, since a long
        extrapolation legitimately runs for minutes.
    """

    address: str = DEFAULT_ADDRESS
    tls: bool = False
    tls_ca: str | os.PathLike | None = None
    token: str | None = None
    timeout: float = 30.0
    stream_timeout: float | None = None

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("address must be HOST:PORT, got an empty string")
        if self.timeout <= 0 or (self.stream_timeout is not None and self.stream_timeout <= 0):
            raise ValueError(f"timeouts must be > 0 seconds, got timeout={self.timeout} "
                             f"stream_timeout={self.stream_timeout}")

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def _channel_args(self):
        return [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]

    def _credentials(self) -> grpc.ChannelCredentials | None:
        if not (self.tls or self.tls_ca):
            return None
        root = None
        if self.tls_ca:
            try:
                root = Path(self.tls_ca).read_bytes()
            except OSError as exc:
                raise ValueError(f"tls_ca {self.tls_ca}: cannot read ({exc.strerror})") from None
        return grpc.ssl_channel_credentials(root_certificates=root)

    def channel(self) -> grpc.Channel:
        creds = self._credentials()
        if creds is None:
            return grpc.insecure_channel(self.address, options=self._channel_args())
        return grpc.secure_channel(self.address, creds, options=self._channel_args())

    def aio_channel(self) -> grpc.aio.Channel:
        creds = self._credentials()
        if creds is None:
            return grpc.aio.insecure_channel(self.address, options=self._channel_args())
        return grpc.aio.secure_channel(self.address, creds, options=self._channel_args())
