"""The app's lifespan as the gate passes it through: once the app has started, SIGTERM
drains the instance before the server shuts down (:mod:`coordinator.instance.drain`) and
the server's log line for each denial is dropped (``logs.quiet_handshake_noise``); when
the lifespan ends, the server's own signal handling is back.

An app with no lifespan of its own (Django's and Channels' apps refuse one; daphne sends
none) gives the gate a ``startup`` instead (:class:`Lifecycle`): the gate then starts
the coordinator, runs ``startup()`` beside the server and arms the drain itself, at the
server's lifespan startup, or, where none comes, at the first connection or request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from coordinator._asgi import ASGIApp, Message, Receive, Scope, Send
from coordinator.instance.coordinator import Coordinator
from coordinator.instance.drain import DRAINS
from coordinator.logs import quiet_handshake_noise

Startup = Callable[[], Awaitable[None]]
log = logging.getLogger("coordinator.gate")


async def run_lifespan(app: ASGIApp, coord: Coordinator, scope: Scope, receive: Receive,
                       send: Send) -> None:
    async def sent(message: Message) -> None:
        if message["type"] == "lifespan.startup.complete":
            quiet_handshake_noise()
            DRAINS.attach(coord)
        await send(message)

    async def received() -> Message:
        message = await receive()
        if message["type"] == "lifespan.shutdown":
            DRAINS.detach(coord)
        return message

    await app(scope, received, sent)


class Lifecycle:
    """The instance's lifecycle run by the gate (``ConnectionGate(..., startup=...)``).

    :meth:`begin`, once, whoever calls first: ``coord.start()``, ``startup()`` as a task
    of its own (the phases, while the server answers), the drain armed. :meth:`lifespan`
    answers the server's lifespan with it (the app behind never sees one) and ends it at
    shutdown: the startup cancelled, the drain disarmed, the coordinator stopped. Under a
    server that sends no lifespan (daphne) the gate calls :meth:`begin` at its first
    scope, and the drain's own end stops the coordinator.
    """

    def __init__(self, coord: Coordinator, startup: Startup) -> None:
        self.coord = coord
        self.startup = startup
        self.begun = False  # read on every scope: a plain bool
        self._beginning: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def begin(self) -> None:
        if self._beginning is None:
            self._beginning = asyncio.ensure_future(self._begin())
        await asyncio.shield(self._beginning)

    async def _begin(self) -> None:
        await self.coord.start()
        # The coordinator's task: its stop cancels it (under daphne, with no lifespan
        # shutdown to end it, the drain's end is that stop).
        self._task = self.coord.tasks.spawn(self._run_startup(), "startup")
        quiet_handshake_noise()
        DRAINS.attach(self.coord)
        self.begun = True

    async def _run_startup(self) -> None:
        try:
            await self.startup()
        except Exception:
            if self.coord.failure is None:  # else a phase failed: logged with its traceback
                log.exception("startup %r of instance %s raised", self.startup, self.coord.id)

    async def end(self) -> None:
        DRAINS.detach(self.coord)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.coord.stop()

    async def lifespan(self, receive: Receive, send: Send) -> None:
        """Answer the server's lifespan: start at its startup, end at its shutdown."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.begin()
                except Exception as exc:
                    log.exception("starting instance %s failed", self.coord.id)
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.end()
                await send({"type": "lifespan.shutdown.complete"})
                return
