"""Socket.IO behind the gate, as pure ASGI: an engine.io open (a polling ``GET``, or a
WebSocket, without a ``sid``) on the Socket.IO path is held, released and rejected like a
handshake; every request that carries a ``sid`` passes untouched whatever the instance's
state; a drain ends the app's sessions after the gate's own connections, paced."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping
from typing import Any

import pytest

from coordinator.contract.phases import State
from coordinator.gate import engineio
from coordinator.gate.gate import ConnectionGate
from coordinator.instance.coordinator import Coordinator
from coordinator.settings import Settings
from coordinator.socketio import SocketIOSessions
from tests.support import (
    DENIAL,
    FakeWebSocket,
    NoRedis,
    handshake,
    hold_each,
    in_phase,
    until_held,
)

DEADLINE = 5.0


class FakeRequest:
    """One HTTP request as an ASGI server presents it: what the gate and the app sent, and
    the client's side (``disconnect``; a server reports it once the response is sent)."""

    def __init__(self, query: str = "EIO=4&transport=polling&t=abc", method: str = "GET",
                 path: str = "/socket.io/") -> None:
        self.scope: dict[str, Any] = {"type": "http", "method": method, "path": path,
                                      "query_string": query.encode(), "headers": []}
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.inbox.put_nowait({"type": "http.request", "body": b"", "more_body": False})
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(dict(message))
        if message["type"] == "http.response.body":
            self.disconnect()

    def disconnect(self) -> None:
        self.inbox.put_nowait({"type": "http.disconnect"})

    def response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        start, body = self.sent
        assert (start["type"], body["type"]) == ("http.response.start", "http.response.body")
        return int(start["status"]), dict(start["headers"]), body["body"]


class EngineIO:
    """An engine.io server's stand-in: answers every request with 200 and what it read."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append(scope)
        if scope["type"] == "websocket":
            self.received.append(await receive())
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        self.received.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'0{"sid":"s1"}'})


def gate_with(settings: dict[str, Any] | None = None,
              **options: Any) -> tuple[ConnectionGate, Coordinator, EngineIO]:
    """A gate (``options``) in front of :class:`EngineIO`, its owner never started."""
    coord = Coordinator(Settings(**{"instance_id": "gate-test", "environment": "test",
                                    **(settings or {})}), client=NoRedis())  # type: ignore[arg-type]
    engine = EngineIO()
    return ConnectionGate(engine, coord, **options), coord, engine


def request(gate: ConnectionGate, req: FakeRequest | FakeWebSocket) -> asyncio.Task[None]:
    return asyncio.create_task(gate(req.scope, req.receive, req.send))



def socketio_websocket(query: str) -> FakeWebSocket:
    socket = FakeWebSocket(DENIAL)
    socket.scope.update(path="/socket.io/", query_string=query.encode())
    return socket


@pytest.mark.parametrize(("path", "query", "method", "opens"), [
    ("/socket.io/", "EIO=4&transport=polling&t=x", "GET", True),
    ("/socket.io", "EIO=4&transport=polling", "GET", True),
    ("/socket.io/", "EIO=4&transport=polling&sid=abc", "GET", False),
    # engine.io reads the query with parse_qs: an empty sid is none, and opens a session
    ("/socket.io/", "EIO=4&transport=polling&sid=", "GET", True),
    ("/socket.io/", "EIO=4&transport=polling&sid", "GET", True),
    ("/socket.io/", "sid=abc&EIO=4&transport=polling", "POST", False),
    ("/socket.io/", "EIO=4&transport=polling", "OPTIONS", False),  # a CORS preflight
    ("/socket.io/", "EIO=4&transport=polling", "POST", False),
    ("/socket.iox/", "EIO=4&transport=polling", "GET", False),
    ("/api/socket.io/", "EIO=4&transport=polling", "GET", False),
])
def test_what_counts_as_an_engineio_open(path: str, query: str, method: str,
                                         opens: bool) -> None:
    scope = FakeRequest(query, method, path).scope
    prefix = engineio.prefix("/socket.io")
    assert prefix == "/socket.io/"
    assert (engineio.on_path(scope, prefix) and engineio.is_open(scope)) is opens


def test_a_get_that_carries_a_body_is_no_open_the_gate_holds() -> None:
    """A hold reads nothing after the request's first message: a body still coming would
    end it as a client that gave up, answered by no one (HTTP 500). engine.io opens
    carry none; such a GET goes to engine.io, which answers it."""
    for header in ((b"content-length", b"5"), (b"transfer-encoding", b"chunked")):
        scope = FakeRequest("EIO=4&transport=polling", "GET", "/socket.io/").scope
        scope["headers"] = [*scope.get("headers", []), header]
        assert not engineio.is_open(scope)
    scope = FakeRequest("EIO=4&transport=polling", "GET", "/socket.io/").scope
    scope["headers"] = [*scope.get("headers", []), (b"content-length", b"0")]
    assert engineio.is_open(scope)


def test_the_socketio_path_is_normalised_and_can_be_turned_off() -> None:
    assert engineio.prefix("socket.io") == engineio.prefix("/socket.io/") == "/socket.io/"
    assert engineio.prefix("/chat/socket.io") == "/chat/socket.io/"
    assert engineio.prefix(None) is None and engineio.prefix("/") is None


async def test_a_polling_open_is_held_then_released_to_the_app_with_its_request() -> None:
    gate, coord, engine = gate_with()
    opens = [FakeRequest() for _ in range(3)]
    async with in_phase(coord, "services"):
        tasks = await hold_each(gate, opens)
        assert engine.calls == [] and all(r.sent == [] for r in opens)  # held: no answer
    await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
    assert engine.calls == [r.scope for r in opens]  # first in, first out
    assert engine.received[0]["type"] == "http.request"  # the buffered request, replayed
    assert all(r.response()[0] == 200 for r in opens)
    assert gate.state.admitted == {"after_hold": 3}
    assert len(gate.state.connections) == 0  # a polling open is answered, not kept open


async def test_a_rejected_polling_open_is_503_with_retry_after_and_no_body() -> None:
    """No body: python-engineio's client reads a refused open's body after closing its
    session, and a body that arrives late raises past its reconnection loop."""
    gate, coord, engine = gate_with(settings={"max_queue": 1})
    async with in_phase(coord, "services"):
        held = request(gate, FakeRequest())
        await until_held(gate, 1)
        refused = FakeRequest()
        await asyncio.wait_for(request(gate, refused), DEADLINE)
        status, headers, body = refused.response()
        assert status == 503 and int(headers[b"retry-after"]) >= 1
        assert body == b"" and headers[b"content-length"] == b"0"
        assert gate.state.rejected == {"queue_full": 1}
    await asyncio.wait_for(held, DEADLINE)
    assert len(engine.calls) == 1


async def test_close_mode_still_answers_a_polling_open_with_503() -> None:
    gate, coord, _engine = gate_with(settings={"reject": "close"})
    coord.begin_drain()
    refused = FakeRequest()
    await asyncio.wait_for(request(gate, refused), DEADLINE)
    assert refused.response()[0] == 503 and gate.state.rejected == {"draining": 1}


async def test_a_polling_open_whose_client_leaves_while_held_frees_its_slot() -> None:
    gate, coord, engine = gate_with(settings={"max_queue": 1})
    async with in_phase(coord, "services"):
        quitter = FakeRequest()
        (task,) = await hold_each(gate, [quitter])
        quitter.disconnect()
        await asyncio.wait_for(task, DEADLINE)
        assert gate.state.rejected == {"gave_up": 1} and gate.state.queue.has_room
    assert quitter.sent == [] and engine.calls == []


async def test_a_websocket_open_without_sid_is_held_like_any_handshake() -> None:
    gate, coord, engine = gate_with()
    async with in_phase(coord, "services"):
        socket = socketio_websocket("EIO=4&transport=websocket")
        task = handshake(gate, socket)
        await until_held(gate, 1)
        assert engine.calls == []
    await asyncio.wait_for(task, DEADLINE)
    assert socket.types == ["websocket.accept", "websocket.close"]
    assert gate.state.admitted == {"after_hold": 1}


@pytest.mark.parametrize("state", ["starting", "draining", "failed"])
async def test_requests_of_an_open_session_pass_untouched_whatever_the_state(
        state: str) -> None:
    gate, coord, engine = gate_with()
    if state == "draining":
        coord.begin_drain()
    elif state == "failed":
        coord.fail("services raised")
    poll, post = FakeRequest("EIO=4&transport=polling&sid=s1"), \
        FakeRequest("EIO=4&transport=polling&sid=s1", "POST")
    upgrade = socketio_websocket("EIO=4&transport=websocket&sid=s1")
    preflight = FakeRequest("EIO=4&transport=polling", "OPTIONS")
    for req in (poll, post, upgrade, preflight):
        await asyncio.wait_for(request(gate, req), DEADLINE)
    assert engine.calls == [poll.scope, post.scope, upgrade.scope, preflight.scope]
    assert upgrade.types == ["websocket.accept", "websocket.close"]  # not refused
    assert not gate.state.rejected and not gate.state.admitted and len(gate.state.queue) == 0


async def test_on_a_ready_instance_an_open_goes_straight_through_and_is_counted() -> None:
    gate, coord, engine = gate_with()
    async with in_phase(coord, "services"):
        pass
    assert coord.state is State.READY
    req = FakeRequest()
    await asyncio.wait_for(request(gate, req), DEADLINE)
    assert engine.calls == [req.scope] and gate.state.admitted == {"immediate": 1}


async def test_without_a_socketio_path_polling_passes_and_every_websocket_is_gated() -> None:
    gate, coord, engine = gate_with(socketio_path=None)
    req = FakeRequest()
    await asyncio.wait_for(request(gate, req), DEADLINE)
    assert engine.calls == [req.scope]  # the open is not recognised
    coord.begin_drain()
    upgrade = socketio_websocket("EIO=4&transport=websocket&sid=s1")
    await asyncio.wait_for(handshake(gate, upgrade), DEADLINE)
    assert upgrade.status == 503  # a WebSocket like any other


async def test_a_socketio_path_of_its_own_is_where_opens_are_held() -> None:
    gate, coord, engine = gate_with(socketio_path="/chat/socket.io")
    coord.begin_drain()
    elsewhere, there = FakeRequest(), FakeRequest(path="/chat/socket.io/")
    for req in (elsewhere, there):
        await asyncio.wait_for(request(gate, req), DEADLINE)
    assert engine.calls == [elsewhere.scope] and there.response()[0] == 503


async def test_a_drain_ends_the_sessions_after_the_connections_paced_over_the_spread() -> None:
    loop = asyncio.get_running_loop()
    ended: list[tuple[str, float]] = []

    def session(name: str) -> Any:
        async def end() -> None:
            ended.append((name, loop.time()))
        return end

    gate, _coord, _engine = gate_with(sessions=lambda: [session("a"), session("b")])

    async def close(code: int, reason: str) -> None:
        ended.append((f"ws{code}", loop.time()))

    gate.state.connections.update({1: close})
    started = loop.time()
    assert await asyncio.wait_for(gate.close_connections(spread=0.3), DEADLINE) == 3
    assert [name for name, _ in ended] == ["ws1012", "a", "b"]
    gaps = [b - a for a, b in zip([started] + [t for _, t in ended], [t for _, t in ended],
                                  strict=False)]
    assert all(gap >= 0.099 for gap in gaps[1:]), gaps  # one every 0.1 s after the first


async def test_a_failing_session_listing_leaves_the_gates_own_closes_alone(
        caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> list[Any]:
        raise RuntimeError("the app's listing broke")

    gate, _coord, _engine = gate_with(sessions=broken)
    closed: list[int] = []

    async def close(code: int, reason: str) -> None:
        closed.append(code)

    gate.state.connections.update({1: close})
    with caplog.at_level(logging.ERROR, "coordinator.gate"):
        assert await asyncio.wait_for(gate.close_connections(), DEADLINE) == 1
    assert closed == [1012] and "listing the sessions to end" in caplog.text


class FakeSocket:
    def __init__(self) -> None:
        self.closed = self.closing = False
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.reason: str | None = None

    async def close(self, wait: bool = True, abort: bool = False,
                    reason: str | None = None) -> None:
        assert abort, "a drain drops the transport: no CLOSE packet"
        self.closed, self.reason = True, reason


class FakeEngineServer:
    class reason:  # python-engineio's name
        SERVER_DISCONNECT = "server disconnect"

    def __init__(self, *sids: str) -> None:
        self.sockets = {sid: FakeSocket() for sid in sids}


class FakeSocketIOServer:
    def __init__(self, eio: FakeEngineServer) -> None:
        self.eio = eio


async def test_socketio_sessions_drop_each_engineio_session_open_at_the_drain() -> None:
    eio = FakeEngineServer("a", "b")
    sessions = SocketIOSessions(FakeSocketIOServer(eio))
    closers = sessions()
    eio.sockets["c"] = FakeSocket()  # opened after the listing: the next drain's
    for end in closers:
        await end()
    for sid in ("a", "b"):
        socket = eio.sockets[sid]
        assert socket.closed and socket.reason == "server disconnect"
        assert socket.queue.get_nowait() is None  # its writer (poll or WebSocket) wakes
    assert not eio.sockets["c"].closed
    await closers[0]()  # ending one twice does nothing more
    assert eio.sockets["a"].queue.empty()
    assert len(SocketIOSessions(eio)()) == 3  # the engine.io server itself will do too
