"""Python client of the SinFusion gRPC service (sync and asyncio) and the `sinfusion` CLI.

Installs and imports without torch: it needs grpcio, protobuf and numpy (PyAV only for video files).

    from sinfusion.clients import Client, Sampling
    with Client("127.0.0.1:50051") as client:
        print(client.list_models())
        for frame in client.generate("clouds", 24, Sampling(method="ddim", steps=20, seed=1)):
            frame.image  # uint8 (H, W, 3)

See docs/client.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Names are imported on first use, so that `import sinfusion.clients.cli` runs the CLI module's first
# lines before grpc is loaded (it sets GRPC_VERBOSITY, which grpc reads once, at import).
_EXPORTS = {"AsyncClient": ".aio", "ClientError": ".errors", "ConnectionOptions": ".options",
            "DEFAULT_ADDRESS": ".options", "Frame": ".messages", "ModelInfo": ".messages",
            "Sampling": ".messages", "Client": ".sync"}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .aio import AsyncClient
    from .errors import ClientError
    from .messages import Frame, ModelInfo, Sampling
    from .options import DEFAULT_ADDRESS, ConnectionOptions
    from .sync import Client


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
