"""The connections a gate handed to its app: guarded, so that the gate can close them (a
drain, a maximum age) and the app's next send or receive says so, and kept while open
(:class:`OpenConnections`) to be counted and closed, paced, by a drain."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from coordinator._asgi import ASGIApp, Message, Receive, Scope, Send
from coordinator._tasks import TaskSet
from coordinator.contract.rejection import CLOSE_SERVICE_RESTART, Reason
from coordinator.gate.rejection import close, deny

Closer = Callable[[int, str], Coroutine[Any, Any, None]]
# Ends one session the app keeps beyond the gate's sight (a Socket.IO session: the gate
# passes its requests through), with no code or reason: the ``sessions`` of a gate.
SessionCloser = Callable[[], Coroutine[Any, Any, None]]


class ClosedByGate(OSError):
    """What the app's ``send`` raises once the gate has closed its connection (a drain, a
    maximum age): an ``OSError``, as a server's own "client disconnected" is, so Starlette
    turns it into ``WebSocketDisconnect`` and a handler that only sends stops."""


class GuardedConnection:
    """The app's ``send`` and ``receive``, through which the gate can close the connection.

    Once the gate has closed it, the app's next send raises :class:`ClosedByGate` and its
    next receive is a ``websocket.disconnect`` (1012): an app that loops on either ends,
    instead of running on, unseen, after the client is gone. A connection the app has not
    accepted yet is refused instead (HTTP 503 + Retry-After where the server offers a
    denial response): a close before the accept would reach the client as HTTP 403.
    """

    __slots__ = ("_extensions", "_receive", "_send", "accepted", "closed")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._extensions = scope.get("extensions") or {}
        self._receive = receive
        self._send = send
        self.accepted = False
        self.closed = False

    async def send(self, message: Message) -> None:
        if self.closed:
            raise ClosedByGate("the gate closed this connection")
        if message["type"] == "websocket.accept":
            self.accepted = True
        await self._send(message)

    async def receive(self) -> Message:
        if self.closed:
            return {"type": "websocket.disconnect", "code": CLOSE_SERVICE_RESTART}
        return await self._receive()

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            if self.accepted:
                await close(self._send, code, reason)
            elif "websocket.http.response" in self._extensions:
                await deny(self._send, reason)
            else:
                await self._send({"type": "websocket.accept"})
                await close(self._send, code, reason)


class OpenConnections(dict[int, Closer]):
    """The connections handed to the app and still open, by id (oldest first), each with
    the closer of its :class:`GuardedConnection`.

    ``close_reason(reason)`` gives a 1012 close its reason (the rejection JSON with its
    hint); ``max_age`` (COORD_MAX_CONNECTION_AGE) closes a connection that lived that
    long, and ``on_expire`` counts it; closes run as ``tasks`` of the gate.
    """

    def __init__(self, *, tasks: TaskSet, close_reason: Callable[[Reason], str],
                 max_age: float | None = None,
                 on_expire: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.tasks = tasks
        self.close_reason = close_reason
        self.max_age = max_age
        self.on_expire = on_expire

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send,
                  conn: int) -> None:
        """Hand the connection to ``app`` under id ``conn``, open until the app returns."""
        guarded = GuardedConnection(scope, receive, send)
        self[conn] = guarded.close
        expiry = None
        if self.max_age is not None:
            # At a moment of its own within the last tenth of the age, so that connections
            # opened together (a deploy's wave) do not all close together.
            age = self.max_age * random.uniform(0.9, 1.0)
            expiry = asyncio.get_running_loop().call_later(age, self._expire, conn)
        try:
            await app(scope, guarded.receive, guarded.send)
        except ClosedByGate:
            pass  # the app did not catch it: the connection is over, as the gate meant
        finally:
            self.pop(conn, None)
            if expiry is not None:
                expiry.cancel()

    def _expire(self, conn: int) -> None:
        """COORD_MAX_CONNECTION_AGE: close with 1012 and a hint, before the platform's cut."""
        closer = self.pop(conn, None)
        if closer is not None:
            self.on_expire()
            self.tasks.spawn(closer(CLOSE_SERVICE_RESTART, self.close_reason(Reason.MAX_AGE)),
                             "max-age-close")

    async def close_all(self, *, timeout: float = 1.0, spread: float = 0.0,
                        sessions: Iterable[SessionCloser] = ()) -> int:
        """Close every open connection with 1012 (service restart), the reason the
        rejection JSON (``{"reason": "draining", "retry_after": N}``), and end every one of
        ``sessions`` after them; how many closed.

        With ``spread`` the closes are paced evenly over that many seconds, oldest first,
        then the sessions in their order, so that the clients' reconnects reach the rest of
        the fleet as a ramp. Bounded: a client that stopped reading can block its close
        frame for as long as the server's keepalive allows, so whatever has not closed
        ``timeout`` seconds after the last close began is abandoned (the server's own
        shutdown drops it).

        A connection stays here (open, in the record's count) until its own close goes
        out; one that a concurrent call closed first (a second signal during the spread
        closes the rest at once), or whose client left, is skipped.
        """
        order: list[int | SessionCloser] = [*self, *sessions]  # oldest first
        if not order:
            return 0
        interval = spread / len(order)
        tasks = []
        for n, item in enumerate(order):
            if n and interval > 0:
                await asyncio.sleep(interval)
            if not isinstance(item, int):
                tasks.append(self.tasks.spawn(item(), "drain-session"))
                continue
            closer = self.pop(item, None)
            if closer is not None:
                tasks.append(self.tasks.spawn(
                    closer(CLOSE_SERVICE_RESTART, self.close_reason(Reason.DRAINING)),
                    "drain-close"))
        if not tasks:
            return 0
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return sum(1 for t in done if not t.cancelled() and t.exception() is None)
