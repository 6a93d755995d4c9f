"""The connections a gate handed to its app: guarded, so that the gate can close them (a
drain, a maximum age) and the app's next send or receive says so."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from coordinator._asgi import Message, Receive, Scope, Send
from coordinator.contract.rejection import CLOSE_SERVICE_RESTART
from coordinator.gate.rejection import deny

Closer = Callable[[int, str], Coroutine[Any, Any, None]]


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
                await self._send({"type": "websocket.close", "code": code, "reason": reason})
            elif "websocket.http.response" in self._extensions:
                await deny(self._send, reason)
            else:
                await self._send({"type": "websocket.accept"})
                await self._send({"type": "websocket.close", "code": code, "reason": reason})
