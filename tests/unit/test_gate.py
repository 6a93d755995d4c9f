"""The gate as pure ASGI: hand-written receive/send, an owner Coordinator that is never
started (its Redis client fails on any use), phases driven by the test."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import MutableMapping
from typing import Any

import pytest

from coordinator.contract.phases import State
from coordinator.instance.drain import DRAINS
from coordinator.logs import HandshakeNoiseFilter
from coordinator.settings import DEFAULT_PHASES
from tests.support import (
    DENIAL,
    FakeWebSocket,
    gate_for,
    handshake,
    hold_each,
    in_phase,
    run_phases,
    until_held,
)

DEADLINE = 5.0



def assert_app_served(client: FakeWebSocket) -> None:
    assert client.types == ["websocket.accept", "websocket.send", "websocket.close"]
    assert client.sent[-1]["code"] == 1000


async def test_http_passes_through_untouched() -> None:
    gate, coord, app = gate_for()
    scope = {"type": "http", "path": "/health/live"}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: MutableMapping[str, Any]) -> None:
        pass

    assert coord.state is State.STARTING  # a WebSocket would be held now
    await gate(scope, receive, send)
    assert len(app.calls) == 1
    passed_scope, passed_receive, passed_send = app.calls[0]
    assert passed_scope is scope and passed_receive is receive and passed_send is send
    assert len(gate.state.queue) == 0 and not gate.state.rejected and not gate.state.admitted


async def test_lifespan_messages_pass_through_and_the_drain_is_attached_while_it_runs(
        ) -> None:
    gate, coord, _app = gate_for()
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    app_saw: list[str] = []
    server_saw: list[str] = []
    attached: list[bool] = []

    async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
        for reply in ("lifespan.startup.complete", "lifespan.shutdown.complete"):
            app_saw.append((await receive())["type"])
            await send({"type": reply})
            attached.append(coord in DRAINS.coordinators)

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        server_saw.append(message["type"])

    gate.app = lifespan_app
    await gate({"type": "lifespan"}, receive, send)
    assert app_saw == ["lifespan.startup", "lifespan.shutdown"]
    assert server_saw == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert attached == [True, False]  # from startup complete until shutdown began


async def test_ready_fast_path_calls_the_app_without_redis() -> None:
    gate, coord, app = gate_for()
    await run_phases(coord, *DEFAULT_PHASES[:5])
    assert coord.is_ready
    client = FakeWebSocket()
    await asyncio.wait_for(gate(client.scope, client.receive, client.send), DEADLINE)
    assert_app_served(client)
    assert app.calls[0][0] is client.scope
    assert app.received[0] == {"type": "websocket.connect"}
    assert gate.state.admitted == {"immediate": 1}
    assert gate.state.connections == {}  # forgotten once the app returned


async def test_rejection_is_503_with_retry_after_where_the_server_offers_it() -> None:
    gate, coord, app = gate_for()
    async with in_phase(coord, "init"):  # earlier phase, no statistics: reject "starting"
        client = FakeWebSocket(DENIAL)
        await asyncio.wait_for(gate(client.scope, client.receive, client.send), DEADLINE)
    assert not app.calls
    assert client.types == ["websocket.http.response.start", "websocket.http.response.body"]
    start, body = client.sent
    assert start["status"] == 503
    headers = dict(start["headers"])
    retry_after = headers[b"retry-after"].decode()
    assert retry_after.isdigit() and int(retry_after) >= 1
    assert json.loads(body["body"]) == {"reason": "starting", "retry_after": int(retry_after)}
    assert headers[b"content-length"] == str(len(body["body"])).encode()
    assert gate.state.rejected == {"starting": 1}


async def test_without_the_denial_extension_the_gate_accepts_and_closes_1013() -> None:
    gate, coord, app = gate_for()
    async with in_phase(coord, "dependencies"):
        client = FakeWebSocket()
        await asyncio.wait_for(gate(client.scope, client.receive, client.send), DEADLINE)
    code, reason = client.close_reason()
    assert code == 1013
    assert reason["reason"] == "starting"
    assert isinstance(reason["retry_after"], int) and reason["retry_after"] >= 1
    assert not app.calls


async def test_reject_close_mode_closes_even_where_a_denial_response_is_offered() -> None:
    gate, coord, _app = gate_for(reject="close")
    async with in_phase(coord, "init"):
        client = FakeWebSocket(DENIAL)
        await asyncio.wait_for(gate(client.scope, client.receive, client.send), DEADLINE)
    code, reason = client.close_reason()
    assert (code, reason["reason"]) == (1013, "starting")


@pytest.mark.parametrize(("extensions", "expected"), [({}, "close"), (DENIAL, "http")])
async def test_draining_rejects_with_1012_or_503(extensions: dict[str, Any],
                                                 expected: str) -> None:
    gate, coord, app = gate_for()
    await run_phases(coord, *DEFAULT_PHASES)
    coord.begin_drain()
    client = FakeWebSocket(extensions)
    await asyncio.wait_for(gate(client.scope, client.receive, client.send), DEADLINE)
    if expected == "close":
        code, reason = client.close_reason()
        assert code == 1012
        assert reason["reason"] == "draining" and reason["retry_after"] in (1, 2)
    else:
        assert client.sent[0]["status"] == 503
    assert not app.calls and gate.state.rejected == {"draining": 1}


async def test_failed_instance_rejects_new_handshakes() -> None:
    gate, coord, _app = gate_for()
    with pytest.raises(RuntimeError):
        async with in_phase(coord, "database"):
            raise RuntimeError("database unreachable")
    client = FakeWebSocket()
    await asyncio.wait_for(gate(client.scope, client.receive, client.send), DEADLINE)
    code, reason = client.close_reason()
    assert (code, reason["reason"]) == (1013, "failed")
    assert reason["retry_after"] >= 1


async def test_held_connections_are_released_in_order_when_the_ready_phase_completes() -> None:
    gate, coord, app = gate_for()
    clients = [FakeWebSocket() for _ in range(3)]
    async with in_phase(coord, "services"):
        tasks = await hold_each(gate, clients)
        assert not app.calls and all(c.sent == [] for c in clients)  # held, not accepted
        assert gate.state.queue.status()["depth"] == 3
    await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
    for client in clients:
        assert_app_served(client)
    assert [call[0] for call in app.calls] == [c.scope for c in clients]  # first in, first out
    assert app.received[0] == {"type": "websocket.connect"}  # the buffered connect, replayed
    assert gate.state.admitted == {"after_hold": 3}
    assert len(gate.state.queue) == 0


async def test_connection_before_any_phase_is_held_too() -> None:
    gate, coord, _app = gate_for()
    client = FakeWebSocket()
    task = handshake(gate, client)
    await until_held(gate, 1)  # phase unknown: held
    await run_phases(coord, *DEFAULT_PHASES[:5])
    await asyncio.wait_for(task, DEADLINE)
    assert_app_served(client)


async def test_a_client_that_gives_up_while_held_frees_its_slot() -> None:
    gate, coord, app = gate_for(max_queue=1)
    async with in_phase(coord, "services"):
        quitter = FakeWebSocket()
        task = handshake(gate, quitter)
        await until_held(gate, 1)
        assert not gate.state.queue.has_room
        quitter.disconnect()
        await asyncio.wait_for(task, DEADLINE)
        assert len(gate.state.queue) == 0 and gate.state.rejected == {"gave_up": 1}
        assert quitter.sent == []  # nobody to answer
        stayer = FakeWebSocket()
        held = handshake(gate, stayer)
        await until_held(gate, 1)  # the freed slot is usable
    await asyncio.wait_for(held, DEADLINE)
    assert_app_served(stayer)
    assert [call[0] for call in app.calls] == [stayer.scope]


async def test_a_full_queue_rejects_with_queue_full() -> None:
    gate, coord, _app = gate_for(max_queue=1)
    async with in_phase(coord, "services"):
        first = FakeWebSocket()
        held = handshake(gate, first)
        await until_held(gate, 1)
        second = FakeWebSocket()
        await asyncio.wait_for(gate(second.scope, second.receive, second.send), DEADLINE)
        code, reason = second.close_reason()
        assert (code, reason["reason"]) == (1013, "queue_full")
    await asyncio.wait_for(held, DEADLINE)
    assert_app_served(first)


async def test_a_failed_phase_rejects_held_connections_at_once() -> None:
    gate, coord, app = gate_for()  # holds last up to 30 s: only the failure can end them now
    clients = [FakeWebSocket(), FakeWebSocket(DENIAL)]
    tasks: list[asyncio.Task[None]] = []

    async def services_explodes_while_holding() -> None:
        async with in_phase(coord, "services"):
            tasks.extend(handshake(gate, c) for c in clients)
            await until_held(gate, 2)
            raise RuntimeError("services exploded")

    with pytest.raises(RuntimeError, match="services exploded"):
        await services_explodes_while_holding()
    await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
    code, reason = clients[0].close_reason()
    assert (code, reason["reason"]) == (1013, "failed")
    assert clients[1].sent[0]["status"] == 503
    assert json.loads(clients[1].sent[1]["body"])["reason"] == "failed"
    assert not app.calls and gate.state.rejected == {"failed": 2}


async def test_a_hold_that_runs_out_is_rejected_with_timeout() -> None:
    gate, coord, app = gate_for(max_queue_time=0.1)
    async with in_phase(coord, "services"):
        client = FakeWebSocket()
        await asyncio.wait_for(gate(client.scope, client.receive, client.send), DEADLINE)
        code, reason = client.close_reason()
        assert (code, reason["reason"]) == (1013, "timeout")
    assert not app.calls and gate.state.rejected == {"timeout": 1}


async def test_draining_rejects_held_connections_with_1012() -> None:
    gate, coord, _app = gate_for()
    async with in_phase(coord, "services"):
        client = FakeWebSocket()
        task = handshake(gate, client)
        await until_held(gate, 1)
        coord.begin_drain()
        await asyncio.wait_for(task, DEADLINE)
    code, reason = client.close_reason()
    assert (code, reason["reason"]) == (1012, "draining")


async def test_gate_off_passes_websockets_through() -> None:
    gate, coord, app = gate_for(gate=False)
    client = FakeWebSocket()
    await asyncio.wait_for(gate(client.scope, client.receive, client.send), DEADLINE)
    assert coord.state is State.STARTING
    assert_app_served(client)
    assert app.calls[0] == (client.scope, client.receive, client.send)


def test_the_denial_noise_filter_drops_only_the_websocket_line_it_expects() -> None:
    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, msg, None, None)

    noise = HandshakeNoiseFilter()
    noise.expect()
    noise.expect()
    # A real HTTP app bug right after a denial is still logged, and uses up no expectation.
    assert noise.filter(record("ASGI callable returned without starting response."))
    assert not noise.filter(record("ASGI callable returned without completing handshake."))
    assert not noise.filter(record("ASGI callable returned without completing handshake."))
    assert noise.filter(record("ASGI callable returned without completing handshake."))
