"""Python client of the SinFusion gRPC service (sync and asyncio) and the `sinfusion` CLI.

Installs and imports without torch: it needs grpcio, protobuf and numpy (PyAV only for video files).

    from clients import Client, Sampling
    with Client("127.0.0.1:50051") as client:
        print(client.list_models())
        for frame in client.generate("clouds", 24, Sampling(method="ddim", steps=20, seed=1)):
            frame.image  # uint8 (H, W, 3)

See docs/client.md.
"""

from .aio import AsyncClient
from .errors import ClientError
from .messages import Frame, ModelInfo, Sampling
from .options import DEFAULT_ADDRESS, ConnectionOptions
from .sync import Client

__all__ = ["AsyncClient", "Client", "ClientError", "ConnectionOptions", "DEFAULT_ADDRESS", "Frame",
           "ModelInfo", "Sampling"]
