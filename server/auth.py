"""Transport security: optional TLS credentials and an optional bearer-token check.

Both are off by default (meant for loopback). With a token, every RPC must carry the metadata
`authorization: Bearer <token>`, except the standard health service, which load balancers and
orchestrators probe without credentials; everything else answers UNAUTHENTICATED.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def tls_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    """Server credentials from PEM files (a certificate chain and its private key)."""
    return grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())])


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming shape as `handler` that only answers UNAUTHENTICATED."""
    async def abort_unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def abort_stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover  (makes this an async generator)

    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort_unary, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(abort_unary, **kwargs)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses RPCs whose `authorization` metadata is not `Bearer <token>` (constant-time compare)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        sent = dict(details.invocation_metadata or ()).get("authorization")
        if sent is None:
            return _refusal(handler, "missing bearer token: send metadata 'authorization: Bearer <token>'")
        if isinstance(sent, str):
            sent = sent.encode()
        if not hmac.compare_digest(sent, self._expected):
            return _refusal(handler, "invalid bearer token")
        return handler
