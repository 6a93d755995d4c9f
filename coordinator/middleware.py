"""The gate: a pure ASGI middleware that holds WebSocket handshakes until ready.

Every scope but ``websocket`` passes through untouched. On a ready instance a WebSocket
passes through too, after one attribute read and no Redis call. Otherwise the gate
applies the admission table (admission.py): it holds the handshake without accepting
it, releases it first in, first out once the instance is ready, or rejects it with a
retry hint. Close code 1011 is never its answer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .admission import HOLD, REJECT, Decision, decide, retry_hint
from .core import Coordinator
from .leases import REFUSED
from .phases import State
from .queue import ADMIT, Hold

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("coordinator.gate")
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_SERVICE_RESTART = 1012
MAX_REASON_BYTES = 123
GAVE_UP = "gave_up"


class ConnectionGate:
    def __init__(self, app: ASGIApp, coordinator: Coordinator) -> None:
        self.app = app
        self.coord = coordinator
        self.observers: list[Callable[[str, str | None, float], None]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket" or not self.coord.settings.gate:
            await self.app(scope, receive, send)
            return
        coord = self.coord
        if coord.status.state is State.READY:  # the fast path: no I/O, no queue
            coord.admitted["immediate"] += 1
            await self._run(scope, receive, send)
            return
        await self._gate(scope, receive, send)

    async def _gate(self, scope: Scope, receive: Receive, send: Send) -> None:
        coord = self.coord
        decision = decide(
            state=coord.state, phase=coord.current_phase, plan=coord.plan,
            has_slot=coord.queue.has_room,
            expected_ready_in=coord.expected_ready_in(),
            wait_budget=coord.settings.wait_budget(coord.current_phase),
            max_queue_time=coord.settings.max_queue_time,
        )
        if decision.action == REJECT:
            await self._reject(scope, receive, send, decision)
            return
        if decision.action != HOLD:
            coord.admitted["immediate"] += 1
            await self._run(scope, receive, send)
            return
        await self._hold(scope, receive, send, decision.hold_for)

    async def _hold(self, scope: Scope, receive: Receive, send: Send, hold_for: float) -> None:
        coord = self.coord
        entry = coord.queue.hold(hold_for)
        if entry is None:  # the queue filled between the decision and now
            await self._reject(scope, receive, send, self._rejection("queue_full"))
            return
        pending: asyncio.Future[Message] | None = None
        try:  # from here on, however this ends, the slot and the lease are given back
            if coord.leases.enabled and not await self._lease(entry, hold_for):
                await self._reject(scope, receive, send, self._rejection("fleet_cap"))
                return
            coord.waiting_changed()
            self._notify("held", None, 0.0)
            # The server's first message is websocket.connect; the next one, before we
            # accept, can only be websocket.disconnect: the client gave up.
            connect = await receive()
            pending = asyncio.ensure_future(receive())
            # One future ends the hold: the release, the hold's deadline, or (through this
            # callback) the client leaving. Awaiting it alone costs ~1 KiB less per held
            # handshake than asyncio.wait over both (bench/memory.py).
            pending.add_done_callback(functools.partial(_give_up, entry.future))
            outcome = await entry.future
            waited = time.monotonic() - entry.enqueued_at
            coord.leases.release(entry.conn)  # the hold is over, whatever happens next
            if outcome == GAVE_UP:  # the client went away while held
                coord.rejected[GAVE_UP] += 1
                self._notify(GAVE_UP, None, waited)
                return
            if outcome == ADMIT and coord.state is State.READY:  # re-checked before handing over
                coord.admitted["after_hold"] += 1
                self._notify("released", None, waited)
                replay = _Replay(connect, pending, receive)
                pending = None  # now the app's to read
                await self._run(scope, replay, send)
                return
            reason = outcome if outcome != ADMIT else _reason_for(coord.state)
            self._notify("rejected", reason, waited)
            await self._reject(scope, _Replay(connect, None, receive), send,
                               self._rejection(reason), counted=False)
            coord.rejected[reason] += 1
        finally:
            coord.queue.forget(entry)
            coord.leases.release(entry.conn)
            if pending is not None and not pending.done():
                pending.cancel()

    async def _lease(self, entry: Hold, hold_for: float) -> bool:
        """With a fleet cap a held connection needs a lease too: False if refused.

        Redis unavailable means the local cap alone decides (the lease outcome is LOCAL).
        A hold that ended while the lease was asked for (released, failed, drained) is
        answered by its own outcome, not as ``fleet_cap``.
        """
        outcome = await self.coord.leases.acquire(entry.conn, hold_for)
        return outcome != REFUSED or entry.future.done()

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand the connection to the app, tracking it so a drain can close it."""
        coord = self.coord
        conn = coord.queue.next_conn_id()  # one id space for holds and open connections
        guarded = _GuardedSend(send)
        coord.connections[conn] = guarded.close
        try:
            await self.app(scope, receive, guarded)
        finally:
            coord.connections.pop(conn, None)

    def _rejection(self, reason: str) -> Decision:
        coord = self.coord
        if reason in ("draining",):
            hint = 1
        elif reason == "failed":
            hint = 5
        else:
            hint = retry_hint(coord.expected_ready_in(),
                              default=retry_hint(coord.settings.wait_budget(coord.current_phase)))
        return Decision(REJECT, reason, retry_after=hint)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, decision: Decision,
                      counted: bool = True) -> None:
        reason = decision.reason or "starting"
        if counted:
            self.coord.rejected[reason] += 1
            self._notify("rejected", reason, 0.0)
        await reject(scope, receive, send, reason, decision.retry_after,
                     mode=self.coord.settings.reject)

    def _notify(self, what: str, reason: str | None, waited: float) -> None:
        for observer in self.observers:
            try:
                observer(what, reason, waited)
            except Exception:  # an observer's bug must not turn a clean answer into a 500
                log.exception("gate observer %r failed", observer)


def _give_up(hold: asyncio.Future[str], _pending: object) -> None:
    if not hold.done():
        hold.set_result(GAVE_UP)


def _reason_for(state: State) -> str:
    return {State.FAILED: "failed", State.STARTING: "timeout"}.get(state, "draining")


def reason_payload(reason: str, retry_after: int) -> str:
    text = json.dumps({"reason": reason, "retry_after": retry_after}, separators=(",", ":"))
    return text if len(text.encode()) <= MAX_REASON_BYTES else text[:MAX_REASON_BYTES]


async def reject(scope: Scope, receive: Receive, send: Send, reason: str, retry_after: int,
                 mode: str = "http") -> None:
    """Refuse a handshake: HTTP 503 + Retry-After where the server offers a denial
    response, else accept and close with 1013 (1012 while draining)."""
    retry_after = max(1, int(retry_after))
    payload = reason_payload(reason, retry_after)
    message = await receive()  # websocket.connect (or disconnect: nothing to answer)
    if message["type"] != "websocket.connect":
        return
    try:
        if mode == "http" and "websocket.http.response" in scope.get("extensions", {}):
            body = payload.encode()
            await send({"type": "websocket.http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", str(retry_after).encode()),
                (b"content-length", str(len(body)).encode()),
            ]})
            await send({"type": "websocket.http.response.body", "body": body})
            handshake_noise.expect()
            return
        code = CLOSE_SERVICE_RESTART if reason == "draining" else CLOSE_TRY_AGAIN_LATER
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": code, "reason": payload})
    except OSError:  # the client is already gone; nothing left to tell it
        pass


class _HandshakeNoiseFilter(logging.Filter):
    """Drops uvicorn's "ASGI callable returned without completing handshake" error for
    handshakes the gate answered on purpose.

    uvicorn 0.54 (websockets-sansio and wsproto) logs that ERROR after every WebSocket
    denial response: one error line per clean rejection, which Cloud Logging counts as
    an error. The gate records each denial the moment it sends it; the filter drops one
    matching record per entry less than a second old, so a genuine app bug that returns
    without a handshake is still logged.
    """

    # Exactly the WebSocket protocols' lines: the HTTP ones ("... without starting
    # response.") go to the same logger and are real app bugs.
    MESSAGES = frozenset({"ASGI callable returned without completing handshake.",
                          "ASGI callable returned without sending handshake."})
    WINDOW = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._expected: collections.deque[float] = collections.deque(maxlen=4096)

    def expect(self) -> None:
        self._expected.append(time.monotonic())

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in self.MESSAGES:
            return True
        cutoff = time.monotonic() - self.WINDOW
        while self._expected and self._expected[0] < cutoff:
            self._expected.popleft()
        if self._expected:
            self._expected.popleft()
            return False
        return True


handshake_noise = _HandshakeNoiseFilter()
logging.getLogger("uvicorn.error").addFilter(handshake_noise)


class _GuardedSend:
    """send() for the app, through which a drain can close the connection.

    Once the gate has sent its 1012 close, the app's own later sends and close are
    dropped: the client is gone, and uvicorn would raise on a send after a close.
    """

    __slots__ = ("_send", "closed")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.closed = False

    async def __call__(self, message: Message) -> None:
        if self.closed and message["type"] in ("websocket.accept", "websocket.send",
                                                "websocket.close"):
            return
        await self._send(message)

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            await self._send({"type": "websocket.close", "code": code, "reason": reason})


class _Replay:
    """receive() for the app: the buffered connect, then the pending read, then live."""

    __slots__ = ("_connect", "_pending", "_receive")

    def __init__(self, connect: Message, pending: asyncio.Future[Message] | None,
                 receive: Receive) -> None:
        self._connect: Message | None = connect
        self._pending = pending
        self._receive = receive

    async def __call__(self) -> Message:
        if self._connect is not None:
            message, self._connect = self._connect, None
            return message
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return await pending
        return await self._receive()
