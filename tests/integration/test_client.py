"""The client helper against the network's own failures, on real TCP sockets.

``FaultyServer`` listens on 127.0.0.1 and fails each connection as its script says, the
way a network or a load balancer does: it drops the connection before any response,
resets it, never answers, or answers with an HTTP status. Once the script is spent it
passes connections through to a real WebSocket server (the ``websockets`` library's),
which welcomes each client and echoes what it sends. No uvicorn here:
tests/e2e/test_client.py runs the helper against the gate's own rejections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from http import HTTPStatus
from types import TracebackType
from typing import Any

import pytest
from websockets import InvalidStatus
from websockets.asyncio.server import Server, ServerConnection, serve

from coordinator.client import Attempt, GaveUp, RetryPolicy, connect
from tests.support import async_wait_until, free_port

FAST: dict[str, Any] = {"base_delay": 0.05, "max_delay": 0.2}


async def welcome_and_echo(ws: ServerConnection) -> None:
    await ws.send(json.dumps({"type": "welcome"}))
    async for text in ws:
        await ws.send(json.dumps({"type": "echo", "text": text}))


class FaultyServer:
    """Fails the n-th connection with ``faults[n]``, then passes connections through.

    Faults: ``drop`` (reads the request, closes: no response at all), ``reset`` (reads
    the request, closes with a TCP RST), ``stall`` (reads the request, never answers),
    or an HTTP status code (answers it, with no body, and closes).
    """

    def __init__(self, *faults: str | int, port: int | None = None) -> None:
        self.faults = list(faults)
        self.port = port or free_port()
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._upstream: Server | None = None
        self._stalled = asyncio.Event()
        self._open: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def __aenter__(self) -> FaultyServer:
        self._upstream = await serve(welcome_and_echo, "127.0.0.1", 0)
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._server is not None and self._upstream is not None
        self._stalled.set()
        self._server.close()
        for writer in self._open:
            writer.transport.abort()  # ends the pass-through pipes: their reads see EOF
        await asyncio.gather(*self._handlers)
        await self._server.wait_closed()
        self._upstream.close()
        await self._upstream.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._open.add(writer)
        self.connections += 1
        fault = self.faults.pop(0) if self.faults else "pass"
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            if fault == "pass":
                await self._pass_through(request, reader, writer)
            elif fault == "stall":
                await self._stalled.wait()
            elif fault == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()  # linger 0: the kernel answers with RST, not FIN
                return
            elif isinstance(fault, int):
                phrase = HTTPStatus(fault).phrase
                writer.write(f"HTTP/1.1 {fault} {phrase}\r\nContent-Length: 0\r\n"
                             "Connection: close\r\n\r\n".encode())
                await writer.drain()
            else:
                assert fault == "drop", fault
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._open.discard(writer)
            self._handlers.discard(task)

    async def _pass_through(self, request: bytes, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        assert self._upstream is not None
        port = self._upstream.sockets[0].getsockname()[1]
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        up_writer.write(request)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.write_eof()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            up_writer.close()


async def chat_once(url: str, policy: RetryPolicy) -> list[str]:
    """Connect through the helper, check the welcome and an echo; the attempts' outcomes."""
    async with connect(url, policy=policy) as session:
        assert json.loads(session.first_message or "") == {"type": "welcome"}
        await session.websocket.send("hello")
        assert json.loads(await session.websocket.recv()) == {"type": "echo", "text": "hello"}
    return [a.outcome for a in session.attempts]


async def raw_exchange(url: str) -> bytes | str:
    """What a plain socket gets from the server for a request: bytes, or how it failed."""
    host, port = url.removeprefix("ws://").split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        async with asyncio.timeout(0.5):
            return await reader.read()
    except TimeoutError:
        return "no answer"
    except ConnectionResetError:
        return "reset"
    finally:
        writer.close()


async def test_the_faults_are_what_they_say_on_the_wire() -> None:
    """The server's side of the tests below: a FIN, a RST, silence, a bare status."""
    async with FaultyServer("drop", "reset", "stall", 502) as server:
        assert [await raw_exchange(server.url) for _ in range(4)] == [
            b"", "reset", "no answer",
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"]


@pytest.mark.parametrize(("fault", "outcome"), [
    ("drop", "dropped"),  # the connection ends where the HTTP response should be
    # websockets reports a reset during the handshake as the same missing response
    # (InvalidMessage from EOFError), so the helper records it as "dropped" too.
    ("reset", "dropped"),
    ("stall", "timeout"),  # the open timeout runs out
])
async def test_a_dropped_connection_a_reset_and_an_open_timeout_are_retried(
        fault: str, outcome: str) -> None:
    policy = RetryPolicy(open_timeout=0.5, **FAST)
    async with FaultyServer(fault, fault) as server:
        assert await chat_once(server.url, policy) == [outcome, outcome, "connected"]
    assert server.connections == 3


@pytest.mark.parametrize("status", [502, 504])
async def test_a_load_balancers_502_and_504_are_retried(status: int) -> None:
    async with FaultyServer(status, status) as server:
        outcomes = await chat_once(server.url, RetryPolicy(**FAST))
    assert outcomes == [f"http {status}", f"http {status}", "connected"]


@pytest.mark.parametrize("status", [403, 404, 500])
async def test_403_404_and_500_are_raised_at_once(status: int) -> None:
    seen: list[Attempt] = []
    async with FaultyServer(status) as server:
        with pytest.raises(InvalidStatus) as info:
            await connect(server.url, policy=RetryPolicy(**FAST), on_attempt=seen.append)
    assert info.value.response.status_code == status
    assert [a.outcome for a in seen] == [f"http {status}"]
    assert server.connections == 1


async def test_connection_refused_is_retried_until_the_server_is_up() -> None:
    port = free_port()
    seen: list[Attempt] = []
    policy = RetryPolicy(max_attempts=50, max_time=20, base_delay=0.05, max_delay=0.1)
    client = asyncio.ensure_future(connect(f"ws://127.0.0.1:{port}/ws", policy=policy,
                                           on_attempt=seen.append))
    await async_wait_until(lambda: len(seen) >= 2, 10, what="two refused attempts")
    async with FaultyServer(port=port):
        session = await client
        await session.close()
    outcomes = [a.outcome for a in session.attempts]
    assert outcomes[-1] == "connected" and set(outcomes[:-1]) == {"refused"}, outcomes


async def test_every_address_of_a_dual_stack_host_refusing_is_retried(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio reports one OSError("Multiple exceptions: ...") when all of a host's
    addresses refuse; that is as retryable as a single refusal."""
    port = free_port()
    resolve = socket.getaddrinfo

    def dual_stack(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "dual-stack.test":
            return resolve(host, *args, **kwargs)
        return [*resolve("::1", port, socket.AF_INET6, socket.SOCK_STREAM),
                *resolve("127.0.0.1", port, socket.AF_INET, socket.SOCK_STREAM)]

    monkeypatch.setattr(socket, "getaddrinfo", dual_stack)
    with pytest.raises(GaveUp) as info:
        await connect(f"ws://dual-stack.test:{port}/ws",
                      policy=RetryPolicy(max_attempts=2, **FAST))
    assert [a.outcome for a in info.value.attempts] == ["unreachable"] * 2
    assert "Multiple exceptions" in str(info.value.last)


async def test_a_host_name_that_does_not_resolve_is_not_retried() -> None:
    seen: list[Attempt] = []
    with pytest.raises(socket.gaierror):
        await connect("ws://no-such-host.invalid/ws", policy=RetryPolicy(**FAST),
                      on_attempt=seen.append)
    assert [a.outcome for a in seen] == ["error gaierror"]
