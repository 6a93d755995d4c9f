"""Run an ASGI app under uvicorn with the drain DESIGN.md describes.

uvicorn's own shutdown closes the listening socket and answers handshakes still in
flight with HTTP 500. On the first SIGTERM this server instead tells the coordinator to
drain: ``draining`` is published at once, held and new handshakes are rejected cleanly
while the socket keeps listening for ``COORD_DRAIN_GRACE``, open connections are closed
with 1012, the instance leaves the fleet, and only then does uvicorn shut down. A second
signal (or SIGINT) stops at once, as uvicorn always does.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn

from .core import Coordinator

log = logging.getLogger("coordinator.server")


class DrainingServer(uvicorn.Server):
    """A ``uvicorn.Server`` whose first SIGTERM drains the coordinator before shutting
    down: ``DrainingServer(uvicorn.Config(app, ...), coordinator).run()``."""

    def __init__(self, config: uvicorn.Config, coordinator: Coordinator) -> None:
        super().__init__(config)
        self.coordinator = coordinator
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await super().serve(sockets)
        finally:
            if self._drain is not None and not self._drain.done():
                self._drain.cancel()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self._drain is None and self._loop is not None \
                and self.started:
            self._loop.call_soon_threadsafe(self._start_drain)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_task(self._drain_then_exit(),
                                                                 name="coordinator-drain")

    async def _drain_then_exit(self) -> None:
        grace = self.coordinator.settings.drain_grace
        log.info("SIGTERM: draining for %.1fs before shutdown", grace)
        try:
            await self.coordinator.drain(grace)
        finally:
            self.should_exit = True
