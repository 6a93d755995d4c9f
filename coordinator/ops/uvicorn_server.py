"""The drain's public entry point under uvicorn: :class:`DrainingServer`.

A :class:`uvicorn.Server` whose ``shutdown`` drains first. uvicorn's ``Server`` is public
API (``uvicorn.Server(uvicorn.Config(app, ...)).run()``), and so are the methods this
overrides, each calling uvicorn's own: ``serve`` (declares the entry point before the
app's lifespan starts, so that the gate takes no signal over), ``handle_exit`` (the
handler uvicorn installs for SIGTERM and SIGINT: a second signal ends the drain at once)
and ``shutdown`` (whatever stopped the server, a signal, ``--limit-max-requests`` or
``should_exit`` set by code: the drain runs before uvicorn's own shutdown answers a
pending handshake with HTTP 500).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from types import FrameType

import uvicorn

from coordinator.instance.drain import DRAINS, SAME_SIGNAL

VIA = "coordinator.serve.DrainingServer (uvicorn)"


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` that drains every gated instance of the app before its shutdown.

        DrainingServer(uvicorn.Config(app, host="0.0.0.0", port=8000)).run()

    Nothing of uvicorn's is read or wrapped: with it the drain needs no takeover of
    uvicorn's signal handler (the health document's ``drain.via`` names this class).
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._first_exit: float | None = None
        self._drain_loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        with DRAINS.explicit(VIA, self._armed):
            await super().serve(sockets=sockets)

    def _armed(self) -> bool | None:
        """Whether SIGTERM reaches this server's ``handle_exit`` (uvicorn installs it with
        ``signal.signal`` in the main thread; an application may replace it)."""
        return bool(signal.getsignal(signal.SIGTERM) == self.handle_exit)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # SIGINT, or a SIGTERM that is not the first one's echo, ends the drain at once
        # (as with the fallback's takeover); uvicorn's own handling follows either way.
        now = time.monotonic()
        first, self._first_exit = self._first_exit, self._first_exit or now
        # A signal handler runs between two bytecodes of the main thread: the end of the
        # drain is the event loop's to run.
        if self._drain_loop is not None and (
                sig == signal.SIGINT or (first is not None and now - first >= SAME_SIGNAL)):
            self._drain_loop.call_soon_threadsafe(DRAINS.end_now)
        super().handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._drain_loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Still listening: newcomers get the gate's 503 for the grace, open connections
        # 1012 over its spread, and the instance leaves the fleet; then uvicorn's own.
        await DRAINS.drain_now()
        await super().shutdown(sockets=sockets)
