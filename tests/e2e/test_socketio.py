"""python-socketio behind the gate, end to end: docs/guide.md's Socket.IO service saved as
``main.py``, exactly as printed, under uvicorn with a real Redis, and real clients with
their default transports (long-polling first, then the upgrade): the npm
``socket.io-client`` under node (tests/e2e/sio_node, installed by bin/_setup) and
python-socketio's ``AsyncClient``.

With the gate, clients that arrive during ``services`` are held or refused with a clean
503 and retried, and every one is welcomed once ready; late ones at once; a drain refuses
new opens and ends every session, and each client reconnects, to the instance started in
its place. Without it (``COORD_GATE=off``), the recipe's ``connect`` handler runs before
``services`` and fails: the failure the gate prevents, reproduced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio  # type: ignore[import-untyped]

from tests.support import ROOT, BackendProcess, RedisServer, async_wait_until, doc_blocks

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

NODE_CLIENTS = ROOT / "tests" / "e2e" / "sio_node"
PER_KIND = 3  # clients of each kind in the startup wave
MAX_QUEUE = 2 * PER_KIND - 2  # so that the wave is held in part, and refused in part


Event = dict[str, Any]


class NodeClients:
    """``node clients.js URL COUNT``: npm socket.io-client sockets; their events, in order."""

    def __init__(self, url: str, count: int, first: int = 0) -> None:
        node = shutil.which("node")
        assert node is not None and (NODE_CLIENTS / "node_modules" / "socket.io-client").is_dir(), \
            "node and tests/e2e/sio_node/node_modules are needed: SETUP_FOR_TESTS=1 bin/_setup"
        self.first = first
        self.events: list[Event] = []
        self.proc = subprocess.Popen([node, "clients.js", url, str(count)], cwd=NODE_CLIENTS,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            if "client" in event:
                self.events.append({**event, "client": f"js{self.first + event['client']}"})

    def close(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


class PythonClients:
    """python-socketio ``AsyncClient``s with their defaults (the reconnection delay capped
    at 2 s, as the node ones), the first connect retried (``retry=True``); their events in
    the node clients' form."""

    def __init__(self, url: str, count: int, first: int = 0) -> None:
        self.events: list[Event] = []
        self.clients = [self._client(f"py{first + n}") for n in range(count)]
        self.tasks = [asyncio.create_task(self._connect(name, client, url))
                      for name, client in self.clients]

    def _client(self, name: str) -> tuple[str, socketio.AsyncClient]:
        client = socketio.AsyncClient(reconnection_delay_max=2)
        say = self.events.append

        async def connect() -> None:
            say({"client": name, "event": "connect", "transport": client.transport()})
            try:
                welcome = await client.call("hello", {}, timeout=5)
                say({"client": name, "event": "welcome", "instance": welcome["instance"]})
            except Exception as exc:
                say({"client": name, "event": "hello_error", "error": repr(exc)})

        def connect_error(data: Any) -> None:
            say({"client": name, "event": "connect_error", "data": data})

        def disconnect(reason: Any = None) -> None:
            say({"client": name, "event": "disconnect", "reason": str(reason)})

        client.on("connect", connect)
        client.on("connect_error", connect_error)
        client.on("disconnect", disconnect)
        return name, client

    async def _connect(self, name: str, client: socketio.AsyncClient, url: str) -> None:
        try:
            await client.connect(url, retry=True)
        except Exception as exc:  # a refusal the client does not retry
            self.events.append({"client": name, "event": "connect_raised", "error": repr(exc)})

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for _name, client in self.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.shutdown(), 5)


def recipe(tmp_path: Path) -> Path:
    (main, *_alternatives) = doc_blocks("docs/guide.md", "Socket.IO", "python")
    (tmp_path / "main.py").write_text(main)
    return tmp_path


def service(tmp_path: Path, redis_url: str, namespace: str, name: str, port: int | None = None,
            **env: str) -> BackendProcess:
    uvicorn = str(Path(sys.executable).parent / "uvicorn")
    return BackendProcess({"COORD_REDIS_URL": redis_url, "COORD_NAMESPACE": namespace,
                           "COORD_ENVIRONMENT": "test", **env},
                          tmp_path / f"{name}.log", port=port, cwd=tmp_path,
                          argv=[uvicorn, "main:app", "--port", "{port}"])


@contextlib.contextmanager
def running(proc: BackendProcess) -> Iterator[BackendProcess]:
    proc.start()
    try:
        yield proc
    finally:
        proc.kill()


def health(proc: BackendProcess) -> dict[str, Any]:
    body = proc.get("/health/ready")[1]
    return body if isinstance(body, dict) else {}


async def reach_services(proc: BackendProcess) -> None:
    await async_wait_until(lambda: health(proc).get("phase") == "services", 15,
                           what="the services phase")


def welcomes(events: list[Event]) -> dict[str, list[str]]:
    """Each client's welcomes: the instance that sent each, in order."""
    seen: dict[str, list[str]] = {}
    for e in events:
        if e["event"] == "welcome":
            seen.setdefault(e["client"], []).append(e["instance"])
    return seen


def unclean(events: list[Event]) -> list[Event]:
    """What a client should never see behind the gate: a connect error that is not a clean
    retry (the gate's 503, or no server listening while the instance restarts), a connect
    the client gave up on, a welcome that never came."""
    bad = []
    for e in events:
        if e["event"] == "connect_error" and e["client"].startswith("js"):
            clean = e["message"] == "xhr poll error" and e["status"] in (503, 0)
        elif e["event"] == "connect_error":  # python-engineio passes no status, only this:
            clean = e["data"] is None or "Cannot connect to host" in str(e["data"])
        else:
            clean = e["event"] in ("connect", "welcome", "disconnect")
        if not clean:
            bad.append(e)
    return bad


def polling_open(proc: BackendProcess) -> tuple[int, dict[str, str], bytes]:
    """An engine.io open by long-polling, as a client sends it: status, headers, body."""
    url = f"{proc.http_url}/socket.io/?EIO=4&transport=polling"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def test_socketio_clients_are_held_welcomed_drained_and_welcomed_back(
        tmp_path: Path, redis_server: RedisServer, namespace: str) -> None:
    cwd = recipe(tmp_path)
    first = service(cwd, redis_server.url, namespace, "first", COORD_DRAIN_GRACE="2",
                    COORD_MAX_QUEUE=str(MAX_QUEUE))
    clients: list[NodeClients | PythonClients] = []

    def events() -> list[Event]:
        return [e for c in clients for e in c.events]

    try:
        with running(first):
            await reach_services(first)
            clients += [NodeClients(first.http_url, PER_KIND),
                        PythonClients(first.http_url, PER_KIND)]
            # Held up to the queue's cap, the others refused (503) and retried.
            await async_wait_until(lambda: health(first)["queue"]["depth"] == MAX_QUEUE, 10,
                                   what="the hold queue full of engine.io opens")
            assert welcomes(events()) == {}, "welcomed before the services phase completed"
            await async_wait_until(lambda: len(welcomes(events())) == 2 * PER_KIND, 20,
                                   what="every early client welcomed")
            ready = health(first)
            assert ready["state"] == "ready"
            assert ready["admitted"]["after_hold"] == MAX_QUEUE
            assert ready["rejected"].get("queue_full", 0) >= 1
            # Once ready: welcomed at once.
            clients += [NodeClients(first.http_url, 1, first=PER_KIND),
                        PythonClients(first.http_url, 1, first=PER_KIND)]
            await async_wait_until(lambda: len(welcomes(events())) == 2 * PER_KIND + 2, 10,
                                   what="the late clients welcomed")
            every = set(welcomes(events()))
            assert {instance for w in welcomes(events()).values() for instance in w} \
                == {ready["instance"]}

            # The drain: new opens refused, every session ended, each client reconnecting.
            first.signal(signal.SIGTERM)
            await async_wait_until(lambda: health(first).get("state") == "draining", 5,
                                   what="draining")
            status, headers, body = await asyncio.to_thread(polling_open, first)
            assert status == 503 and int(headers["retry-after"]) >= 1 and body == b""
            await async_wait_until(
                lambda: {e["client"] for e in events() if e["event"] == "disconnect"} == every,
                10, what="every session ended by the drain")
            await asyncio.to_thread(first.wait_exit, timeout=10)
        reasons = {e["client"][:2]: e["reason"] for e in events() if e["event"] == "disconnect"}
        # Both reconnect after these (not after "io server disconnect", nor python's
        # "server disconnect", which a Socket.IO or engine.io disconnect would give).
        assert reasons == {"js": "transport close", "py": "transport error"}, reasons

        # The instance started in its place: every client comes back and is welcomed.
        second = service(cwd, redis_server.url, namespace, "second", port=first.port)
        with running(second):
            await async_wait_until(
                lambda: all(len(w) == 2 for w in welcomes(events()).values()), 25,
                what="every client welcomed by the new instance")
            assert {w[1] for w in welcomes(events()).values()} == {health(second)["instance"]}
            assert unclean(events()) == []
            for log in (first.log(), second.log()):
                assert "Traceback" not in log and " 500 " not in log, log
    finally:
        for c in clients:
            if isinstance(c, NodeClients):
                c.close()
            else:
                await c.close()


async def test_without_the_gate_the_connect_handler_runs_before_services(
        tmp_path: Path, redis_server: RedisServer, namespace: str) -> None:
    """What the gate prevents, so that the test above can fail: COORD_GATE=off, the same
    clients during ``services``. The sessions open at once, each client's CONNECT reaches
    the recipe's ``connect`` handler, which fails (its assert) without what ``services``
    builds: no node client is welcomed (socket.io-client waits for an answer that never
    comes) and every Python one gives up (it waits a second for the namespace)."""
    cwd = recipe(tmp_path)
    ungated = service(cwd, redis_server.url, namespace, "ungated", COORD_GATE="off")
    node: NodeClients | None = None
    python: PythonClients | None = None
    try:
        with running(ungated):
            await reach_services(ungated)
            node = NodeClients(ungated.http_url, PER_KIND)
            python = PythonClients(ungated.http_url, PER_KIND)
            await async_wait_until(
                lambda: ungated.log().count("AssertionError") >= 2 * PER_KIND, 15,
                what="every client's connect handler to fail")
            await async_wait_until(
                lambda: len([e for e in python.events if e["event"] == "connect_raised"])
                == PER_KIND, 10, what="every python client to give up")
            assert health(ungated)["state"] == "starting"  # all of it before services ended
            assert welcomes(node.events) == {} and welcomes(python.events) == {}
            raised = [e["error"] for e in python.events if e["event"] == "connect_raised"]
            assert all(error.startswith("ConnectionError(") for error in raised), raised
            assert len(unclean(node.events + python.events)) >= PER_KIND
    finally:
        if node is not None:
            node.close()
        if python is not None:
            await python.close()
