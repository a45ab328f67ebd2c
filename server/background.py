"""A server on a background thread with its own event loop, for synchronous callers (tests, bench).

    with BackgroundServer(ServerConfig(models=dir)) as running:
        channel = grpc.insecure_channel(running.target)
"""

from __future__ import annotations

import asyncio
import threading

from .app import Running, serve
from .config import ServerConfig


class BackgroundServer:
    def __init__(self, config: ServerConfig, models=None, timeout: float = 60.0) -> None:
        self.config = config
        self.models = models
        self.timeout = timeout
        self.running: Running | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="sinfusion-server", daemon=True)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with serve(self.config, self.models) as running:
                self.running = running
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:  # handed to the caller of start()
            self._error = exc
        finally:
            self._ready.set()

    def start(self) -> Running:
        self._thread.start()
        if not self._ready.wait(self.timeout):
            raise TimeoutError(f"server did not start within {self.timeout} s")
        if self._error is not None:
            raise self._error
        return self.running

    def stop(self) -> None:
        """Drain (config.grace) and stop; returns when the server thread has ended."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()

    def __enter__(self) -> Running:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
