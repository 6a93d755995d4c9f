"""The drain under every server users run the gate under, with no launcher of ours.

The reference app (``backend.asgi:app``) is served by each server as its users start it,
against a real Redis, with real ``websockets`` clients, and stopped with SIGTERM sent to
the server's first process, as Docker, Kubernetes and Cloud Run send it. Four kinds of
client, as in the table of docs/guide.md, "Drain":

- **held**: arrived during ``services`` and held; the instance becomes ready: welcomed;
- **held at SIGTERM**: held when the SIGTERM comes: HTTP 503 + Retry-After (reason
  ``draining``);
- **open**: chatting on a ready instance when the SIGTERM comes: closed with 1012 and the
  rejection JSON as its reason;
- **fresh**: arriving during the grace: HTTP 503 + Retry-After.

Across all of them: no HTTP 500, no connection cut without a status or a close code, no
1011; and the server exits within Cloud Run's 10 s of the SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from websockets import ConnectionClosed
from websockets.asyncio.client import ClientConnection, connect

from coordinator.contract.record import as_text
from coordinator.instance.drain import SAME_SIGNAL
from harness.processes import BACKEND_COMMAND
from tests.support import (
    CHAT,
    DROPPED,
    HTTP,
    NEAR_READY_DURATIONS,
    REFUSED,
    BackendProcess,
    Outcome,
    RedisServer,
    async_wait_until,
    backend_env,
    chat,
    held_in_redis,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

BIN = Path(sys.executable).parent
APP = "backend.asgi:app"
SERVERS: dict[str, tuple[str, ...]] = {
    "python-m-backend": BACKEND_COMMAND,
    "uvicorn-sansio": (sys.executable, "-m", "uvicorn", APP, "--host", "127.0.0.1",
                       "--port", "{port}", "--ws", "websockets-sansio"),
    "uvicorn-wsproto": (sys.executable, "-m", "uvicorn", APP, "--host", "127.0.0.1",
                        "--port", "{port}", "--ws", "wsproto"),
    "uvicorn-legacy-websockets": (sys.executable, "-m", "uvicorn", APP, "--host", "127.0.0.1",
                                  "--port", "{port}", "--ws", "websockets"),
    "uvicorn-workers": (sys.executable, "-m", "uvicorn", APP, "--host", "127.0.0.1",
                        "--port", "{port}", "--workers", "2"),
    "fastapi-run": (str(BIN / "fastapi"), "run", "backend/asgi.py", "--host", "127.0.0.1",
                    "--port", "{port}"),
    "gunicorn": (str(BIN / "gunicorn"), "-k", "uvicorn_worker.UvicornWorker", "-w", "2",
                 "-b", "127.0.0.1:{port}", APP),
    "hypercorn": (str(BIN / "hypercorn"), "-b", "127.0.0.1:{port}", APP),
    "hypercorn-in-process": (str(BIN / "hypercorn"), "-w", "0", "-b", "127.0.0.1:{port}", APP),
    # granian picks rloop when it is installed (it is, in the test extra), else uvloop.
    "granian": (str(BIN / "granian"), "--interface", "asgi", "--host", "127.0.0.1",
                "--port", "{port}", APP),
    "granian-uvloop": (str(BIN / "granian"), "--interface", "asgi", "--loop", "uvloop",
                       "--host", "127.0.0.1", "--port", "{port}", APP),
    # The public entry points (coordinator.serve): no takeover, the server drains itself.
    "uvicorn-draining-server": (sys.executable, "-m", "tests.e2e.entry_points", "uvicorn",
                                "{port}"),
    "hypercorn-shutdown-trigger": (sys.executable, "-m", "tests.e2e.entry_points",
                                   "hypercorn", "{port}"),
}
# How each server's SIGTERM drains the instance (the health document's drain.via).
VIA = {"uvicorn-draining-server": "coordinator.serve.DrainingServer (uvicorn)",
       "hypercorn-shutdown-trigger":
           "coordinator.serve.serve_hypercorn (hypercorn shutdown_trigger)",
       "hypercorn": "hypercorn's multiprocess shutdown event"}
EXITS_CLEANLY = ("python-m-backend", "uvicorn-draining-server", "hypercorn-shutdown-trigger")
HELD = 8
OPEN_EXTRA = 2
FRESH = 5
GRACE = 2.0  # COORD_DRAIN_GRACE: short, so that the whole matrix stays quick
CLOUD_RUN_KILL_AFTER = 10.0  # seconds from SIGTERM to SIGKILL


class Open:
    """A chatting client that stays connected; ``closed`` ends with how it was closed."""

    def __init__(self, ws: ClientConnection, welcome: dict[str, Any]) -> None:
        self.ws = ws
        self.welcome = welcome
        self.closed = asyncio.get_running_loop().create_task(self._until_closed())

    async def _until_closed(self) -> tuple[int | None, Any]:
        try:
            while True:
                await self.ws.recv()
        except ConnectionClosed as exc:
            if exc.rcvd is None:
                return None, None  # cut: no close frame
            try:
                return exc.rcvd.code, json.loads(exc.rcvd.reason)
            except ValueError:
                return exc.rcvd.code, exc.rcvd.reason


async def open_chat(url: str) -> Open | Outcome:
    """A client that stays once welcomed (an :class:`Open`), or how it was refused."""
    try:
        ws = await connect(url, open_timeout=30)
    except Exception:  # refused in some way: let chat() say how, with a fresh attempt
        return await chat(url)
    welcome = json.loads(await ws.recv())
    await ws.send("hello")
    await ws.recv()
    return Open(ws, welcome)


def server_env(namespace: str, redis_url: str, services: float) -> dict[str, str]:
    env = backend_env(namespace=namespace, redis_url=redis_url, COORD_DRAIN_GRACE=str(GRACE),
                      COORD_HEARTBEAT_INTERVAL="0.5", COORD_INSTANCE_TTL="3",
                      BACKEND_PHASE_DURATIONS=f"{NEAR_READY_DURATIONS},services={services}")
    # Each worker of a multi-process server runs the app, its startup included: an
    # instance of its own, with an id of its own (generated: host, pid, random).
    del env["COORD_INSTANCE_ID"]
    return env


async def in_services(client: redis.Redis, namespace: str, instances: int) -> bool:
    members = await client.zrange(f"{{{namespace}}}:instances", 0, -1)
    phases = [await client.hget(f"{{{namespace}}}:instance:{as_text(m)}", "phase")
              for m in members]
    return len(members) >= instances and all(p == "services" for p in phases)


def workers(name: str) -> int:
    return 2 if name in ("uvicorn-workers", "gunicorn") else 1


def assert_clean_503(outcome: Outcome, what: str) -> None:
    assert outcome.kind == HTTP and outcome.status == 503, (what, outcome)
    assert outcome.rejection == "draining" and int(outcome.retry_after or 0) >= 1, (what,
                                                                                    outcome)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., BackendProcess]]:
    started: list[BackendProcess] = []

    def start(name: str, env: dict[str, str], tag: str) -> BackendProcess:
        proc = BackendProcess(env, tmp_path / f"{name}-{tag}.log", argv=SERVERS[name])
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        if proc.proc is not None:
            proc.kill()  # also closes the log of one that has exited by itself


def sigterm_and_time_exit(proc: BackendProcess) -> Callable[[], float]:
    assert proc.proc is not None
    proc.signal(signal.SIGTERM)
    sent = time.monotonic()

    def exited_after() -> float:
        proc.wait_exit(timeout=CLOUD_RUN_KILL_AFTER + 5)
        return time.monotonic() - sent

    return exited_after


def expected_via(name: str) -> str:
    if name in VIA:
        return VIA[name]
    if name.startswith(("hypercorn", "granian")):
        return "loop.add_signal_handler"
    return "signal.signal"


async def held_then_open_then_sigterm(name: str, proc: BackendProcess, client: redis.Redis,
                                      namespace: str) -> None:
    """Columns 1, 3 and 4: held clients welcomed at ready; open ones closed with 1012
    after the SIGTERM; fresh ones during the grace turned away with 503."""
    await async_wait_until(lambda: in_services(client, namespace, workers(name)), 20,
                           what="services")
    drain = proc.get("/health/ready")[1]["drain"]  # 503 while starting: the document all the same
    assert drain["armed"] and drain["via"].startswith(expected_via(name)), drain
    held = await asyncio.gather(*(open_chat(proc.ws_url) for _ in range(HELD)))
    opened = [c for c in held if isinstance(c, Open)]
    assert len(opened) == HELD, [c for c in held if not isinstance(c, Open)]
    opened += [c for c in await asyncio.gather(*(open_chat(proc.ws_url)
                                                 for _ in range(OPEN_EXTRA)))
               if isinstance(c, Open)]
    assert len(opened) == HELD + OPEN_EXTRA
    exited_after = sigterm_and_time_exit(proc)
    await async_wait_until(lambda: proc.get("/health/ready")[0] == 503, 5,
                           what="draining (ready answers 503)")
    fresh = await asyncio.gather(*(chat(proc.ws_url) for _ in range(FRESH)))
    for outcome in fresh:
        assert_clean_503(outcome, "fresh during the grace")
    closes = await asyncio.wait_for(asyncio.gather(*(c.closed for c in opened)),
                                    CLOUD_RUN_KILL_AFTER)
    for code, reason in closes:
        assert code == 1012 and reason["reason"] == "draining", closes
        assert reason["retry_after"] >= 1
    assert await asyncio.to_thread(exited_after) < CLOUD_RUN_KILL_AFTER
    if name in EXITS_CLEANLY:
        assert proc.proc is not None and proc.proc.returncode == 0, proc.log()[-3000:]


async def held_at_sigterm(name: str, proc: BackendProcess, client: redis.Redis,
                          namespace: str) -> None:
    """Column 2: held when the SIGTERM comes: 503 + Retry-After, not a 500 or a cut."""
    await async_wait_until(lambda: in_services(client, namespace, workers(name)), 20,
                           what="services")
    held = [asyncio.create_task(chat(proc.ws_url)) for _ in range(HELD)]
    await async_wait_until(lambda: _at_least(held_in_redis(client, namespace), HELD), 10,
                           what="every client held")
    exited_after = sigterm_and_time_exit(proc)
    for outcome in await asyncio.wait_for(asyncio.gather(*held), CLOUD_RUN_KILL_AFTER):
        assert outcome.kind != CHAT, outcome
        assert_clean_503(outcome, "held at SIGTERM")
    assert await asyncio.to_thread(exited_after) < CLOUD_RUN_KILL_AFTER


async def _at_least(value: Any, n: int) -> bool:
    return await value >= n


@pytest.mark.parametrize("name", list(SERVERS))
async def test_sigterm_under_each_server_gives_clean_answers_and_exits_in_time(
        name: str, serve: Callable[..., BackendProcess], redis_server: RedisServer,
        redis_text: redis.Redis, namespace: str) -> None:
    ready_soon = serve(name, server_env(f"{namespace}-a", redis_server.url, 2.0), "a")
    never_ready = serve(name, server_env(f"{namespace}-b", redis_server.url, 60.0), "b")
    await asyncio.gather(
        held_then_open_then_sigterm(name, ready_soon, redis_text, f"{namespace}-a"),
        held_at_sigterm(name, never_ready, redis_text, f"{namespace}-b"))
    for proc in (ready_soon, never_ready):
        log = proc.log()
        assert " 500" not in log and "1011" not in log, log[-3000:]
        assert "SIGTERM will drain instance" in log, log[-3000:]  # how: in the log line


# Not granian, gunicorn or hypercorn's multi-process mode: their parent process takes the
# signal, forwards the first to the workers and not the second (docs/guide.md: Drain).
@pytest.mark.parametrize(("name", "second"), [("python-m-backend", signal.SIGTERM),
                                              ("uvicorn-sansio", signal.SIGINT),
                                              ("hypercorn-in-process", signal.SIGTERM),
                                              ("uvicorn-draining-server", signal.SIGINT),
                                              ("uvicorn-draining-server", signal.SIGTERM),
                                              ("hypercorn-shutdown-trigger", signal.SIGTERM)])
async def test_a_second_signal_ends_a_long_drain_at_once(
        name: str, second: int, serve: Callable[..., BackendProcess],
        redis_server: RedisServer, namespace: str) -> None:
    env = {**server_env(namespace, redis_server.url, 0.2), "COORD_DRAIN_GRACE": "30"}
    proc = serve(name, env, "second")
    proc.wait_ready()
    opened = [c for c in await asyncio.gather(*(open_chat(proc.ws_url) for _ in range(3)))
              if isinstance(c, Open)]
    assert len(opened) == 3
    proc.signal(signal.SIGTERM)
    await async_wait_until(lambda: proc.get("/health/ready")[0] == 503, 5, what="draining")
    await asyncio.sleep(SAME_SIGNAL)  # a SIGTERM sooner than this counts as the same stop
    proc.signal(second)
    sent = time.monotonic()
    # Not 30 s later: the server's own shutdown, now (allowing 5 s for a loaded machine).
    await asyncio.to_thread(proc.wait_exit, timeout=15)
    assert time.monotonic() - sent < 5.0
    closes = await asyncio.wait_for(asyncio.gather(*(c.closed for c in opened)), 5)
    assert all(code == 1012 for code, _reason in closes), closes


async def test_arrivals_from_sigterm_until_exit_get_503_then_find_the_port_closed(
        serve: Callable[..., BackendProcess], redis_server: RedisServer,
        namespace: str) -> None:
    """Every arrival during the grace: 503. Once the drain is over the server stops
    listening and exits: its port refuses connections. Never a 500, never a 1011.

    One thing no application can prevent: a client whose TCP connection the kernel
    accepted in the very instant the server closes its listening socket sees it closed
    without a response ("dropped"), as with any server that stops. That is allowed only
    after the grace, when load balancers have long stopped sending here.
    """
    proc = serve("python-m-backend", server_env(namespace, redis_server.url, 0.2), "late")
    proc.wait_ready()
    assert proc.proc is not None
    proc.signal(signal.SIGTERM)
    grace_ends = time.monotonic() + GRACE
    await async_wait_until(lambda: proc.get("/health/ready")[0] == 503, 5,
                           what="the SIGTERM handled (ready answers 503)")
    seen: list[tuple[float, Outcome]] = []
    while proc.proc.poll() is None:
        started = time.monotonic()
        seen.append((started, await chat(proc.ws_url)))
    seen.append((time.monotonic(), await chat(proc.ws_url)))  # and once it has exited
    for started, outcome in seen:
        if started < grace_ends:
            assert_clean_503(outcome, "arrived during the grace")
        elif outcome.kind not in (REFUSED, DROPPED):
            assert_clean_503(outcome, "arrived after the grace")
    assert sum(1 for s, o in seen if s < grace_ends) >= 5 and seen[-1][1].kind == REFUSED
