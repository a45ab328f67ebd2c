"""Errors of the client library: one class, carrying the gRPC status when the server gave one."""

from __future__ import annotations

import grpc


class ClientError(Exception):
    """A call that failed. `code` is the server's gRPC status (None for a reply that broke the
    contract, e.g. a frame of the wrong byte length); `details` is the server's one-line message."""

    def __init__(self, code: grpc.StatusCode | None, details: str):
        super().__init__(f"{code.name if code else 'PROTOCOL'}: {details}")
        self.code, self.details = code, details

    @classmethod
    def from_rpc(cls, exc: grpc.RpcError) -> ClientError:
        """Wrap a grpc error (sync or aio); the message stays on one line."""
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
        return cls(code, " ".join(str(details).split()))
