"""Drain and failure at awkward moments: a drain that begins while the ready phase runs,
a phase that fails during a drain, a client that stops reading, an app that keeps
sending after the drain closed its connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

import pytest

from coordinator.contract.phases import State
from coordinator.gate.connections import ClosedByGate
from tests.support import DENIAL, FakeWebSocket, gate_for, handshake, in_phase, run_phases

DEADLINE = 5.0


async def test_ready_phase_completing_during_a_drain_does_not_reopen_admission():
    gate, coord, _app = gate_for()
    async with in_phase(coord, "services"):
        coord.begin_drain()
    assert coord.state is State.DRAINING
    assert coord.ready_at is None
    assert coord.owner is not None
    outbox = coord.owner.outbox
    events = [outbox.get_nowait().event for _ in range(outbox.qsize())]
    assert "ready" not in events and events[-2:] == ["draining", "phase_completed"]
    client = FakeWebSocket()
    await asyncio.wait_for(handshake(gate, client), DEADLINE)
    code, reason = client.close_reason()  # rejected as draining, not admitted
    assert (code, reason["reason"]) == (1012, "draining")


async def test_a_phase_failing_during_a_drain_leaves_the_instance_draining():
    _gate, coord, _app = gate_for()
    await run_phases(coord, "init")
    coord.begin_drain()
    coord.fail("database raised")
    assert coord.state is State.DRAINING


async def test_closing_connections_is_bounded_when_a_client_stops_reading():
    gate, _coord, _app = gate_for()
    stuck = asyncio.Event()

    async def never_closes(code: int, reason: str) -> None:
        await stuck.wait()  # a send blocked by a client that stopped reading

    closed: list[int] = []

    async def closes(code: int, reason: str) -> None:
        closed.append(code)

    gate.state.connections.update({1: never_closes, 2: closes})
    assert await asyncio.wait_for(gate.close_connections(timeout=0.2), DEADLINE) == 1
    assert closed == [1012] and gate.state.connections == {}


class ChattyApp:
    """Accepts, then sends for ever: a push-only handler, which stops only when a send
    fails."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.running = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        self.running.set()
        try:
            n = 0
            while True:
                await send({"type": "websocket.send", "text": str(n)})
                n += 1
                await asyncio.sleep(0.001)
        except BaseException as exc:
            self.errors.append(exc)
            raise


class LateAcceptApp:
    """Takes its time before accepting (a handler that awaits something first)."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        self.started.set()
        await self.go.wait()
        await send({"type": "websocket.accept"})


@pytest.mark.parametrize(("extensions", "expected"), [(DENIAL, "http 503"), ({}, "close 1012")])
async def test_a_drain_before_the_app_accepted_refuses_cleanly_not_with_403(
        extensions: dict[str, Any], expected: str) -> None:
    """A close sent before the accept would reach the client as HTTP 403, which clients
    (the helper too) take as final: the gate refuses with its own 503, or 1012."""
    gate, coord, _ = gate_for()
    app = LateAcceptApp()
    gate.app = app
    await run_phases(coord, "init", "dependencies", "database", "cache", "services")
    client = FakeWebSocket(extensions)
    task = handshake(gate, client)
    await asyncio.wait_for(app.started.wait(), DEADLINE)
    await gate.close_connections()
    app.go.set()  # its accept now comes too late: refused, not sent
    await asyncio.wait_for(task, DEADLINE)
    if expected == "http 503":
        status, headers, body = client.denial()
        assert status == 503 and body["reason"] == "draining"
        assert int(headers[b"retry-after"]) == body["retry_after"] >= 1
    else:
        code, reason = client.close_reason()
        assert code == 1012 and reason["reason"] == "draining"


class StrictClient(FakeWebSocket):
    """Raises like uvicorn does on a send after the close."""

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if any(m["type"] == "websocket.close" for m in self.sent):
            raise RuntimeError(f"Unexpected ASGI message {message['type']!r} after close")
        await super().send(message)


async def test_after_the_drain_close_a_push_only_handler_ends_and_sends_nothing_more():
    gate, coord, _ = gate_for()
    app = ChattyApp()
    gate.app = app
    await run_phases(coord, "init", "dependencies", "database", "cache", "services")
    client = StrictClient()
    task = handshake(gate, client)
    await asyncio.wait_for(app.running.wait(), DEADLINE)
    assert await gate.close_connections() == 1
    # It ends (it used to run on for ever, unseen, holding its task): its next send raised
    # ClosedByGate, an OSError as a server's "client disconnected" is; the gate takes it
    # as the end it meant, so the server sees a clean return, not an ASGI error.
    await asyncio.wait_for(task, DEADLINE)
    assert [type(e) for e in app.errors] == [ClosedByGate]
    assert client.types[-1] == "websocket.close"  # nothing was sent after the gate's close
    closes = [m for m in client.sent if m["type"] == "websocket.close"]
    ((code, reason),) = [(m["code"], json.loads(m["reason"])) for m in closes]
    # The draining hint is 1 s, plus a spread of its own: 1 or 2.
    assert code == 1012 and reason["reason"] == "draining" and reason["retry_after"] in (1, 2)


async def test_closes_are_paced_evenly_over_the_spread_each_with_the_rejection_json():
    gate, _coord, _app = gate_for()
    loop = asyncio.get_running_loop()
    at: list[float] = []
    reasons: list[dict[str, Any]] = []

    async def closer(code: int, reason: str) -> None:
        at.append(loop.time())
        reasons.append({"code": code, **json.loads(reason)})

    gate.state.connections.update(dict.fromkeys(range(5), closer))
    started = loop.time()
    assert await asyncio.wait_for(gate.close_connections(spread=0.5), DEADLINE) == 5
    gaps = [b - a for a, b in zip([started, *at], at, strict=False)]
    # Five closes over 0.5 s, one every 0.1 s after the first (lower bounds only: the
    # loop's timer may fire late under load, never early).
    assert all(gap >= 0.099 for gap in gaps[1:]), gaps
    assert all(r["code"] == 1012 and r["reason"] == "draining" for r in reasons)
    assert all(r["retry_after"] in (1, 2) for r in reasons)  # 1 s plus a spread


async def test_a_connection_counts_as_open_until_its_own_paced_close():
    """The record's ``connections`` (and so the dashboard's Open column) falls as the
    paced closes go out, not all at once when the spread begins."""
    gate, _coord, _app = gate_for()
    still_open: list[int] = []

    async def closer(code: int, reason: str) -> None:
        still_open.append(gate.counts(True).connections)

    gate.state.connections.update(dict.fromkeys(range(5), closer))
    assert await asyncio.wait_for(gate.close_connections(spread=0.2), DEADLINE) == 5
    assert still_open == [4, 3, 2, 1, 0]
