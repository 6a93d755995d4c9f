"""The tests' one support module: real parts (from ``harness``, shared with the
benchmarks) and the helpers only tests use. Test modules import helpers from here (and
fixtures from ``conftest.py``), never from one another.

Every wait has a deadline and polls a condition; nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    MutableMapping,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as redis
import uvicorn
from redis.typing import EncodableT

from coordinator._redis import topology
from coordinator.contract.events import Message, encode_event
from coordinator.contract.keys import Keys
from coordinator.contract.record import as_text, encode_fields
from coordinator.contract.rejection import MAX_REASON_BYTES
from coordinator.contract.signing import Keyring
from coordinator.fleet.registry import write_record
from coordinator.gate.gate import ConnectionGate
from coordinator.gate.rejection import reject
from coordinator.instance.coordinator import Coordinator
from coordinator.settings import DEFAULT_PHASES, Settings
from harness.chat import (
    CHAT,
    CLOSE,
    DROPPED,
    GAVE_UP,
    HTTP,
    IMPLEMENTATIONS,
    NEAR_READY_DURATIONS,
    REFUSED,
    Outcome,
    assert_chatted,
    assert_clean_rejection,
    backend_env,
    chat,
    counters,
    health,
    storm,
    tally,
    wait_for_phase,
)
from harness.processes import (
    HAPROXY_CONFIG,
    ROOT,
    BackendProcess,
    HAProxy,
    RedisServer,
    async_wait_until,
    free_port,
    haproxy_env,
    port_open,
    wait_until,
)
from harness.rolling import Population, RollingFleet

__all__ = [
    "ACL_PASSWORD",
    "CHAT",
    "CLOSE",
    "COORDINATOR_CLI",
    "DENIAL",
    "DROPPED",
    "GAVE_UP",
    "HAPROXY_CONFIG",
    "HTTP",
    "IMPLEMENTATIONS",
    "NEAR_READY_DURATIONS",
    "REFUSED",
    "ROOT",
    "TIME_FIELDS",
    "AclRedis",
    "App",
    "BackendProcess",
    "CliProcess",
    "Dashboard",
    "FakeWebSocket",
    "HAProxy",
    "NoRedis",
    "Outcome",
    "Population",
    "RedisServer",
    "RollingFleet",
    "Samples",
    "Scripted",
    "assert_chatted",
    "assert_clean_rejection",
    "async_wait_until",
    "backend_env",
    "backend_paths",
    "chat",
    "cli_env",
    "counters",
    "echo_app",
    "equals",
    "event",
    "free_port",
    "gate_for",
    "get",
    "handshake",
    "haproxy_env",
    "health",
    "held_in_redis",
    "hold_each",
    "in_phase",
    "instance_record",
    "instance_settings",
    "keyring",
    "knock",
    "known_variables",
    "metric",
    "parse_metrics",
    "port_open",
    "publish",
    "put_instance",
    "put_record",
    "reach_services",
    "record_of",
    "redis_mapping",
    "route_paths",
    "run_cli",
    "run_phases",
    "serving",
    "start_all",
    "storm",
    "subscribers",
    "tally",
    "until_held",
    "wait_for_phase",
    "wait_until",
    "without_times",
]


# -- Redis ------------------------------------------------------------------------------

async def subscribers(client: redis.Redis, channel: str) -> int:
    """How many clients are subscribed to ``channel`` now (sharded ones on a cluster)."""
    sub = "SHARDNUMSUB" if (await topology.resolve(client)).sharded else "NUMSUB"
    reply = await client.execute_command("PUBSUB", sub, channel)
    return int(reply[1]) if isinstance(reply, list) else int(reply[channel])


async def publish(client: redis.Redis, channel: str, message: bytes | str) -> int:
    """PUBLISH, or SPUBLISH where the topology shards channels; the receivers' count."""
    command = "SPUBLISH" if (await topology.resolve(client)).sharded else "PUBLISH"
    return int(await client.execute_command(command, channel, message))


async def equals(pending: Awaitable[Any], expected: Any) -> bool:
    """For waits on a Redis read: ``async_wait_until(lambda: equals(read(), x), ...)``."""
    return bool(await pending == expected)


def instance_record(instance_id: str, now: float, *, state: str = "starting",
                    phase: str = "services", index: int = 5, depth: int = 0,
                    beat_age: float = 0.5, ttl: float = 10.0, **extra: Any) -> dict[str, str]:
    """An instance hash as an instance writes it (every field of the Redis contract),
    heartbeating ``beat_age`` seconds before ``now``."""
    fields: dict[str, Any] = {
        "id": instance_id, "state": state, "phase": phase, "phase_index": index,
        "phases_total": 7, "started_at": now - 20, "updated_at": now - 2,
        "heartbeat_at": now - beat_age, "phase_started_at": now - 2.0, "ready_at": None,
        "expected_ready_at": None, "ttl": ttl, "queue_depth": depth, "queue_max": 50,
        "held_leases": 0, "fleet_cap": None, "admitted": 0, "rejected": 0, "redis": "ok",
        "host": "node-1", "pid": 1234, "version": "0.1.0",
    }
    fields.update(extra)
    return encode_fields(fields)


def redis_mapping(fields: Mapping[Any, Any]) -> dict[EncodableT, EncodableT]:
    """``fields`` typed as redis-py's HSET takes them (its key type is a union)."""
    return dict(fields.items())


async def put_record(client: redis.Redis, keys: Keys, fields: Mapping[str, str]) -> None:
    """Write an instance hash and its index entry with the writer the instances use."""
    await write_record(client, keys, dict(fields), float(fields["ttl"]),
                       float(fields["heartbeat_at"]))


async def put_instance(client: redis.Redis, keys: Keys, instance_id: str,
                       now: float | None = None, **fields: Any) -> dict[str, str]:
    """:func:`put_record` of an :func:`instance_record`; the record written."""
    record = instance_record(instance_id, time.time() if now is None else now, **fields)
    await put_record(client, keys, record)
    return record


def keyring(key: str, namespace: str) -> Keyring:
    """What an instance of ``namespace`` with COORD_SIGNING_KEY=``key`` signs with."""
    ring = Keyring.of(key, namespace)
    assert ring is not None
    return ring


def event(instance: str, name: str = "phase_started", phase: str | None = "services",
          index: int | None = 5, *, ts: float | None = None, key: str | None = None,
          namespace: str | None = None, **extra: Any) -> bytes:
    """One channel message as an instance publishes it, signed with ``key`` for
    ``namespace`` if given; ``extra`` holds the optional fields (``state``,
    ``phases_total``, ``duration``, ...)."""
    msg = Message(instance, name, phase, index, time.time() if ts is None else ts,
                           extra)
    if key is None:
        return encode_event(msg)
    assert namespace is not None, "a signature is bound to a namespace"
    return encode_event(msg, keyring(key, namespace))


# Derived from the reader's clock, so they differ between two reads of the same fleet.
TIME_FIELDS = ("generated_at", "heartbeat_age", "time_in_phase", "expected_ready_in")


def without_times(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A fleet document without the fields that move between two reads."""
    return {**{k: v for k, v in doc.items() if k not in TIME_FIELDS},
            "instances": [{k: v for k, v in r.items() if k not in TIME_FIELDS}
                          for r in doc["instances"]]}


@dataclass
class AclRedis:
    """A redis-server with the default user off, an ACL user ``coord`` (password
    ``ACL_PASSWORD``), and a TLS port whose certificate ``ca`` signed."""

    server: RedisServer
    tls_port: int
    ca: Path

    def url(self, password: str = "", tls: bool = False) -> str:
        password = password or ACL_PASSWORD
        if tls:
            return (f"rediss://coord:{password}@127.0.0.1:{self.tls_port}/0"
                    f"?ssl_ca_certs={self.ca}")
        return f"redis://coord:{password}@127.0.0.1:{self.server.port}/0"


ACL_PASSWORD = "pw-never-in-any-log-7f3a"


# -- the gate as pure ASGI ----------------------------------------------------------------

DENIAL: dict[str, Any] = {"websocket.http.response": {}}  # the server offers the denial


class FakeWebSocket:
    """One WebSocket handshake as an ASGI server presents it to the gate: what the gate
    and the app were sent, and the client's side (``disconnect``). Like a server, it
    reports the client gone once the exchange is over (a close, or a denial's body)."""

    def __init__(self, extensions: dict[str, Any] | None = None) -> None:
        self.scope: dict[str, Any] = {"type": "websocket", "path": "/ws", "headers": [],
                                      "extensions": extensions or {}}
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.inbox.put_nowait({"type": "websocket.connect"})
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(dict(message))
        if message["type"] in ("websocket.close", "websocket.http.response.body"):
            self.disconnect()

    def disconnect(self) -> None:
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1001})

    @property
    def types(self) -> list[str]:
        return [m["type"] for m in self.sent]

    @property
    def accepted(self) -> bool:
        return bool(self.sent) and self.sent[0]["type"] == "websocket.accept"

    @property
    def status(self) -> int | None:
        """The denial response's status, if the gate sent one."""
        for m in self.sent:
            if m["type"] == "websocket.http.response.start":
                return int(m["status"])
        return None

    def denial(self) -> tuple[int, dict[bytes, bytes], dict[str, Any]]:
        """Status, headers and JSON body of a denial response."""
        assert self.types == ["websocket.http.response.start",
                              "websocket.http.response.body"], self.sent
        start, body = self.sent
        return int(start["status"]), dict(start["headers"]), json.loads(body["body"])

    def close_reason(self) -> tuple[int, dict[str, Any]]:
        """Code and JSON reason of an accept-then-close rejection."""
        assert self.types == ["websocket.accept", "websocket.close"], self.sent
        close = self.sent[1]
        assert len(close["reason"].encode()) <= MAX_REASON_BYTES
        return int(close["code"]), json.loads(close["reason"])


async def echo_app(scope: Any, receive: Any, send: Any) -> None:
    """Accepts and keeps the connection until the client leaves."""
    await receive()
    await send({"type": "websocket.accept"})
    await receive()


class App:
    """Accepts, says hello, closes; records every call and what it received."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any, Any]] = []
        self.received: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append((scope, receive, send))
        if scope["type"] != "websocket":
            return
        self.received.append(await receive())
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "hello"})
        await send({"type": "websocket.close", "code": 1000})
        self.received.append(await receive())


class NoRedis:
    """A Redis client that fails on any use: proof that a path makes no Redis call.

    Registering a Lua script is no call (nothing is sent), so it is allowed; running one
    fails like every command.
    """

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"Redis used: .{name}")

    def register_script(self, script: str) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("Redis used: a Lua script")
        return run


def instance_settings(redis_url: str, namespace: str, instance: str,
                      signing_key: str | None = None, **overrides: Any) -> Settings:
    """An instance of two phases, ``init`` and ``services`` (the ready one), in the test
    environment; its 30 s heartbeat leaves its hash alone while a test rewrites it."""
    return Settings(**{"redis_url": redis_url, "namespace": namespace, "instance_id": instance,
                       "phases": ("init", "services"), "ready_phase": "services",
                       "environment": "test", "signing_key": signing_key,
                       "heartbeat_interval": 30, "instance_ttl": 60, **overrides})


def record_of(coord: Coordinator) -> dict[str, str]:
    """The instance hash an owner would write now."""
    assert coord.owner is not None, "only an owner writes the instance hash"
    return coord.owner.record()


def gate_for(**overrides: Any) -> tuple[ConnectionGate, Coordinator, App]:
    """A gate in front of :class:`App`, its owner never started (:class:`NoRedis`)."""
    settings = Settings(**{"instance_id": "gate-test", "environment": "test", **overrides})
    coord = Coordinator(settings, client=NoRedis())  # type: ignore[arg-type]
    app = App()
    return ConnectionGate(app, coord), coord, app


async def run_phases(coord: Coordinator, *names: str) -> None:
    for name in names:
        async with coord.phase(name):
            pass


@contextlib.asynccontextmanager
async def in_phase(coord: Coordinator, name: str) -> AsyncIterator[None]:
    """Run the default phases before ``name``, then stay inside ``name`` until the block
    exits."""
    await run_phases(coord, *DEFAULT_PHASES[:DEFAULT_PHASES.index(name)])
    async with coord.phase(name):
        yield


async def until_held(gate: ConnectionGate, depth: int, timeout: float = 5.0) -> None:
    """Wait (within ``timeout``) until ``gate`` holds ``depth`` handshakes."""
    await async_wait_until(lambda: len(gate.state.queue) >= depth, timeout, interval=0.001,
                           what=f"{depth} held")


async def hold_each(gate: ConnectionGate, clients: list[Any]) -> list[asyncio.Task[None]]:
    """Each client's handshake (a :class:`FakeWebSocket`, or anything with its ``scope``,
    ``receive`` and ``send``) at the gate in its own task, in turn: each held before the
    next arrives."""
    tasks = []
    for n, client in enumerate(clients, start=1):
        tasks.append(asyncio.create_task(gate(client.scope, client.receive, client.send)))
        await until_held(gate, n)
    return tasks


def handshake(gate: ConnectionGate, socket: FakeWebSocket) -> asyncio.Task[None]:
    """One handshake at the gate, in its own task."""
    return asyncio.create_task(gate(socket.scope, socket.receive, socket.send))


def knock(gate: ConnectionGate, count: int, extensions: dict[str, Any] | None = DENIAL,
          ) -> tuple[list[FakeWebSocket], list[asyncio.Task[None]]]:
    """``count`` handshakes at the gate at once, each in its own task."""
    sockets = [FakeWebSocket(extensions) for _ in range(count)]
    return sockets, [handshake(gate, s) for s in sockets]


# -- metrics ----------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str | bytes) -> Samples:
    """Every sample of a /metrics page by (name, labels without ``instance_id``)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Samples = {}
    body = text.decode() if isinstance(text, bytes) else text
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = frozenset((k, v) for k, v in s.labels.items() if k != "instance_id")
            out[(s.name, labels)] = s.value
    return out


def metric(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; KeyError if the page has no such series."""
    return samples[(name, frozenset(labels.items()))]


# -- backend processes ----------------------------------------------------------------------

async def get(backend: BackendProcess, path: str) -> tuple[int, Any]:
    """``backend.get`` off the event loop."""
    return await asyncio.to_thread(backend.get, path)


async def start_all(start_backend: Callable[..., BackendProcess],
                    envs: list[dict[str, str]]) -> list[BackendProcess]:
    """Start the backends together, then wait until each one listens."""
    backends = [start_backend(env, wait=False) for env in envs]
    for backend in backends:
        await async_wait_until(functools.partial(_live, backend), 30,
                               what="the backend to listen")
    return backends


async def _live(backend: BackendProcess) -> bool:
    if backend.proc is not None and backend.proc.poll() is not None:
        raise AssertionError(f"backend exited:\n{backend.log()}")
    return (await get(backend, "/health/live"))[0] == 200


async def held_in_redis(client: redis.Redis, namespace: str) -> int:
    """Handshakes held, summed over the instances' records (a multi-worker server has
    several); read from Redis, not from the backends (whose requests a server may count,
    as uvicorn's ``--limit-max-requests`` does)."""
    total = 0
    for member in await client.zrange(f"{{{namespace}}}:instances", 0, -1):
        depth = await client.hget(f"{{{namespace}}}:instance:{as_text(member)}", "queue_depth")
        total += int(depth or 0)
    return total


async def reach_services(backend: BackendProcess) -> None:
    """Wait until the backend is in its ``services`` phase (failing if it left starting)."""
    async def there() -> bool:
        body = (await get(backend, "/health/ready"))[1]
        if not isinstance(body, dict):
            return False
        assert body["state"] == "starting", f"left starting before services: {body}"
        return bool(body["phase"] == "services")
    await async_wait_until(there, 30, what="the services phase")


def known_variables() -> set[str]:
    """Every environment variable the backend (and its COORD_* settings) reads."""
    from backend.config import BackendConfig

    recorder = _Recorder()
    BackendConfig.from_env(recorder)
    return recorder.asked


class _Recorder(Mapping[str, str]):
    """An empty environment that notes every name it is asked for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return default

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def route_paths(config: Any) -> set[str]:
    """The paths of the backend's own routes (mounts by their prefix) under ``config``."""
    from starlette.routing import Mount, Route, WebSocketRoute

    from backend.app import create_app

    return {r.path for r in create_app(config).routes
            if isinstance(r, Route | WebSocketRoute | Mount)}


def backend_paths() -> set[str]:
    """Every path the backend answers: its routes, and what its mounted apps serve."""
    from starlette.routing import Mount, Route, WebSocketRoute

    from backend.app import create_app
    from backend.config import BackendConfig
    from coordinator.ops.health import PATHS as HEALTH_PATHS
    from coordinator.ops.health import HealthApp

    paths: set[str] = set()
    for route in create_app(BackendConfig.from_env({})).routes:
        assert isinstance(route, Route | WebSocketRoute | Mount)
        if isinstance(route, Mount) and isinstance(route.app, HealthApp):
            paths.update(HEALTH_PATHS)
        else:
            paths.add(route.path)
    return paths


# -- a scripted WebSocket server under a real uvicorn -----------------------------------------

class Scripted:
    """Answers the n-th handshake with ``script[n]`` (then chats), noting arrival times;
    with ``forever``, every handshake with ``script[0]``.

    Actions: ``("gate", reason, retry_after, mode)`` the gate's own rejection (HTTP 503 +
    Retry-After, or accept-and-close 1013/1012 with the JSON reason); ``("bare503",)`` a
    load balancer with no server up; ``("close", code)``; ``("hold", seconds)`` then a
    chat; ``("silent", *frames)`` sends the frames and never answers; ``("chat",)`` a
    welcome frame, then nothing. Plain HTTP requests (a load balancer's health check) get
    200.
    """

    def __init__(self, *script: tuple[Any, ...], forever: bool = False) -> None:
        self.script = list(script)
        self.forever = forever
        self.arrivals: list[float] = []
        self.disconnects = 0  # "silent" connections the client has closed

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        assert scope["type"] == "websocket"
        self.arrivals.append(time.monotonic())
        if self.forever:
            action, *args = self.script[0]
        else:
            action, *args = self.script.pop(0) if self.script else ("chat",)
        if action == "gate":
            await reject(scope, receive, send, *args)
            return
        await receive()  # websocket.connect
        if action == "bare503":
            await send({"type": "websocket.http.response.start", "status": 503, "headers": []})
            await send({"type": "websocket.http.response.body", "body": b""})
            return
        if action == "hold":
            await asyncio.sleep(args[0])
        await send({"type": "websocket.accept"})
        if action == "close":
            await send({"type": "websocket.close", "code": args[0]})
            return
        if action == "silent":
            for frame in args:
                await send({"type": "websocket.send", "text": frame})
            while (await receive())["type"] != "websocket.disconnect":
                pass
            self.disconnects += 1
            return
        await send({"type": "websocket.send", "text": json.dumps({"type": "welcome"})})
        if action == "welcome_then_close":  # (code, reason JSON): a drain, a maximum age
            await send({"type": "websocket.close", "code": args[0],
                        "reason": json.dumps(args[1])})
            return
        while (await receive())["type"] != "websocket.disconnect":
            pass


@contextlib.asynccontextmanager
async def serving(app: Any, port: int | None = None) -> AsyncIterator[str]:
    """``app`` under a real uvicorn (wsproto) on 127.0.0.1; yields its ``ws://`` URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, ws="wsproto",
                                           lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        await async_wait_until(lambda: server.started or task.done(), 10, what="uvicorn")
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        server.should_exit = True
        await task


# -- the coordinator command ------------------------------------------------------------------

# The console script pip installed (pyproject's [project.scripts]), as users run it; the
# tests run it rather than ``python -m coordinator`` (test_cli.py checks that form too).
COORDINATOR_CLI = (str(Path(sys.executable).with_name("coordinator")),)


def cli_env(redis_url: str, namespace: str, **extra: str) -> dict[str, str]:
    """The environment for a ``coordinator`` command: no COORD_* leaks from the test's."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("COORD_")}
    return {**base, "COORD_REDIS_URL": redis_url, "COORD_NAMESPACE": namespace, **extra}


def run_cli(*args: str, env: Mapping[str, str],
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``coordinator ARGS`` to completion, as a user would."""
    return subprocess.run([*COORDINATOR_CLI, *args], env=dict(env), capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, check=False)


class CliProcess:
    """A long-running ``coordinator`` command (``events``, ``fleet --watch``) whose output
    is collected line by line as it arrives; ``interrupt`` is Ctrl-C."""

    def __init__(self, *args: str, env: Mapping[str, str]) -> None:
        self.proc = subprocess.Popen([*COORDINATOR_CLI, *args], env=dict(env), cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def interrupt(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.wait(timeout)

    def wait(self, timeout: float = 10) -> int:
        """The exit status; on timeout the process is killed and TimeoutExpired raised."""
        try:
            return wait_or_kill(self.proc, timeout)
        finally:
            self._reader.join(5)
            assert self.proc.stdout is not None and self.proc.stderr is not None
            if not self.proc.stderr.closed:
                self.proc.stdout.close()
                self.stderr = self.proc.stderr.read()
                self.proc.stderr.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.wait(5)


class Dashboard:
    """``coordinator dashboard``, the standalone server that needs only Redis, with its
    output in ``log``."""

    def __init__(self, redis_url: str, namespace: str, log: Path,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [*COORDINATOR_CLI, "dashboard", "--redis-url", redis_url,
                 "--namespace", namespace, "--port", str(self.port)],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_listening(self) -> Dashboard:
        wait_until(lambda: self._page_ok() or self.proc.poll() is not None, 20,
                   what="the standalone dashboard to listen")
        assert self.proc.poll() is None, self.log.read_text()
        return self

    def _page_ok(self) -> bool:
        with contextlib.suppress(OSError), \
                urllib.request.urlopen(self.url + "/dashboard/", timeout=1) as resp:
            return bool(resp.status == 200)
        return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Send ``sig`` and return the exit status; killed if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return wait_or_kill(self.proc, timeout)


def wait_or_kill(proc: subprocess.Popen[Any], timeout: float) -> int:
    """The exit status; if it does not exit in time, killed and TimeoutExpired raised."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise


def doc_blocks(doc: str, section: str, language: str = "sh") -> list[str]:
    """The fenced blocks in ``language`` of ``## section`` in ``doc`` (a path from the
    repository's root: ``README.md``, ``docs/guide.md``, ...), in order."""
    text = (ROOT / doc).read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start:end if end >= 0 else len(text)]
    return [block for lang, block in re.findall(r"```(\w*)\n(.*?)```", body, re.S)
            if lang == language]
