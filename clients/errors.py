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
        """Wrap a grpc error (sync or aio); the message stays on one line.

        A status without details (grpc.health answers an unknown service with a bare NOT_FOUND) says
        so, rather than falling back to str(exc), which is the call object's multi-field repr.
        """
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else None
        return cls(code, " ".join(str(details).split()) if details else "(the server gave no details)")
