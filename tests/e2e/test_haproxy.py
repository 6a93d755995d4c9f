"""deploy/haproxy.cfg in front of three real backend instances, with a real haproxy.

The rolling restart: a steady population of clients chatting through HAProxy (each uses
the client helper to connect and reconnect) plus a trickle of newcomers, while each
instance in turn is drained with SIGTERM and restarted with a slow `services` phase.
What must hold:
- no client ever sees close code 1011, none gives up;
- every client that the drain disconnected (1012) chats again within RESERVED_WITHIN;
- once HAProxy has marked a draining instance down it sends it no new connection, and
  the restarted instance gets none until it is ready (its own gate held and rejected
  nothing: no connection reached it while it was starting).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from websockets import ConnectionClosed

from coordinator.client import GaveUp, RetryPolicy, connect
from tests.support import (
    HAPROXY_CONFIG,
    BackendProcess,
    HAProxy,
    Scripted,
    async_wait_until,
    free_port,
    haproxy_env,
    serving,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


# The stated bound: a client disconnected by a drain chats again within this many
# seconds (measured: well under one; the bound leaves room for a loaded CI machine).
RESERVED_WITHIN = 10.0
POPULATION = 18
DRAIN_GRACE = 2.0
POLICY = RetryPolicy(max_attempts=10, max_time=30, base_delay=0.1, max_delay=1.0)


def test_the_config_is_valid_for_haproxy(tmp_path):
    env = {**os.environ, "BACKEND_1": "127.0.0.1:1", "BACKEND_2": "127.0.0.1:2",
           "BACKEND_3": "backend-3:8000", "HAPROXY_STATS_SOCKET": str(tmp_path / "s")}
    result = subprocess.run(["haproxy", "-c", "-f", str(HAPROXY_CONFIG)], env=env,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr


def test_a_missing_backend_address_is_an_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKEND_")}
    env |= {"BACKEND_1": "127.0.0.1:1", "BACKEND_2": "127.0.0.1:2"}
    result = subprocess.run(["haproxy", "-c", "-f", str(HAPROXY_CONFIG)], env=env,
                            capture_output=True, text=True, check=False)
    line = HAPROXY_CONFIG.read_text().splitlines().index('    server instance-3 "${BACKEND_3}"') + 1
    assert result.returncode != 0
    assert f"haproxy.cfg:{line}] : 'server' expects <name> and <addr>" in result.stderr


class Population:
    """Clients that chat through the load balancer and reconnect when closed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = asyncio.Event()
        self.closes: Counter[int] = Counter()
        self.failures: list[str] = []
        self.reserved_after: list[float] = []  # seconds from a close to chatting again
        self.chatting: set[int] = set()
        self.newcomers = 0
        self.retried = 0  # connections that took more than one handshake

    async def steady(self, index: int) -> None:
        try:
            await self._steady(index)
        finally:  # however it ended (an exception included), this client chats no more
            self.chatting.discard(index)

    async def _steady(self, index: int) -> None:
        lost_at: float | None = None
        while not self.stop.is_set():
            try:
                async with await connect(self.url, policy=POLICY) as session:
                    self.retried += len(session.attempts) > 1
                    await self._chat_once(session, index)
                    if lost_at is not None:
                        self.reserved_after.append(time.monotonic() - lost_at)
                        lost_at = None
                    self.chatting.add(index)
                    while not self.stop.is_set():
                        await asyncio.sleep(0.2)
                        await self._chat_once(session, index)
            except ConnectionClosed as exc:
                self.chatting.discard(index)
                code = exc.rcvd.code if exc.rcvd is not None else 1006
                self.closes[code] += 1
                if code != 1012:
                    self.failures.append(f"client {index}: closed with {code}")
                    return
                lost_at = time.monotonic()
            except (GaveUp, OSError) as exc:
                self.failures.append(f"client {index}: {exc!r}")
                return

    async def trickle(self) -> None:
        """A newcomer every 100 ms: connects, chats once, leaves."""
        while not self.stop.is_set():
            try:
                async with await connect(self.url, policy=POLICY) as session:
                    self.retried += len(session.attempts) > 1
                    await self._chat_once(session, -1)
                self.newcomers += 1
            except (ConnectionClosed, GaveUp, OSError) as exc:
                self.failures.append(f"newcomer: {exc!r}")
            await asyncio.sleep(0.1)

    @staticmethod
    async def _chat_once(session, index: int) -> None:
        await session.websocket.send(f"client {index}")
        reply = json.loads(await session.websocket.recv())
        assert reply["text"] == f"client {index}", reply


async def test_a_503_from_an_instance_is_replayed_on_another(tmp_path, haproxies):
    """The moment between an instance's SIGTERM and HAProxy's next check: the instance
    passes checks but its gate answers 503. HAProxy replays the handshake elsewhere."""
    draining = Scripted(("gate", "draining", 1, "http"), forever=True)
    ready = [Scripted(), Scripted()]
    ports = [free_port() for _ in range(3)]
    env = {f"BACKEND_{i + 1}": f"127.0.0.1:{port}" for i, port in enumerate(ports)}
    env |= {"HAPROXY_BIND": f"127.0.0.1:{free_port()}",
            "HAPROXY_STATS_SOCKET": str(tmp_path / "haproxy.sock")}
    async with serving(draining, ports[0]), serving(ready[0], ports[1]), \
            serving(ready[1], ports[2]):
        proxy = HAProxy(env, tmp_path / "haproxy.log")
        haproxies.append(proxy)
        await async_wait_until(lambda: all(r["status"] == "UP" for r in proxy.stats().values()),
                               15, what="haproxy to see all three up")
        sessions = [await connect(proxy.url, policy=POLICY) for _ in range(9)]
        for session in sessions:
            await session.close()
        stats = proxy.stats()

    assert [len(s.attempts) for s in sessions] == [1] * 9  # no client saw the 503
    assert len(draining.arrivals) > 0  # though HAProxy did send handshakes there
    assert len(ready[0].arrivals) + len(ready[1].arrivals) == 9
    assert int(stats["BACKEND"]["wredis"]) >= len(draining.arrivals)


def backend(tmp_path: Path, index: int, redis_url: str, namespace: str, port: int | None,
            services: float) -> BackendProcess:
    env = {"COORD_REDIS_URL": redis_url, "COORD_NAMESPACE": namespace,
           "COORD_INSTANCE_ID": f"{namespace}-{index + 1}", "COORD_ENVIRONMENT": "test",
           "COORD_DRAIN_GRACE": str(DRAIN_GRACE),
           "BACKEND_PHASE_DURATIONS": f"services={services}"}
    return BackendProcess(env, tmp_path / f"backend-{index + 1}.log", port=port)


@pytest.fixture
def haproxies():
    started: list[HAProxy] = []
    yield started
    for proxy in started:
        proxy.stop()


async def test_rolling_restart_behind_haproxy(tmp_path, redis_server, namespace, backends,
                                              haproxies):
    fleet = [backend(tmp_path, i, redis_server.url, namespace, None, 0.3) for i in range(3)]
    backends.extend(fleet)
    for proc in fleet:
        proc.start(wait=False)
    for proc in fleet:
        proc.wait_ready()
    proxy = HAProxy(haproxy_env([b.port for b in fleet], free_port(), tmp_path / "haproxy.sock"),
                    tmp_path / "haproxy.log")
    haproxies.append(proxy)
    wait_until(lambda: all(r["status"] == "UP" for r in proxy.stats().values()), 15,
               what="haproxy to see all three instances up")

    population = Population(proxy.url)
    tasks = [asyncio.create_task(population.steady(i)) for i in range(POPULATION)]

    def everyone_chatting(tasks: list[asyncio.Task[None]]) -> bool:
        for task in tasks:  # a client that raised says why at once, not at the deadline
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise AssertionError(f"a client failed: {task.exception()!r}")
        assert population.failures == []  # a client that gave up, or saw another close
        return len(population.chatting) == POPULATION

    tasks.append(asyncio.create_task(population.trickle()))
    report: list[dict[str, object]] = []
    try:
        await async_wait_until(lambda: everyone_chatting(tasks), 30,
                               what="the population to chat")
        for i in range(3):
            report.append(await _restart(i, fleet, backends, proxy, tmp_path,
                                         redis_server.url, namespace))
        await async_wait_until(lambda: everyone_chatting(tasks), 30,
                               what="every client to chat again")
    finally:
        population.stop.set()
        ended = await asyncio.gather(*tasks, return_exceptions=True)

    # A client that raised (a wrong echo fails _chat_once's assertion) ended its task
    # with that exception: none may have.
    crashed = [repr(e) for e in ended if isinstance(e, BaseException)]
    assert crashed == [], crashed
    print(f"rolling restart: {report}; closes {dict(population.closes)}; newcomers "
          f"{population.newcomers}; retried {population.retried}; re-served after max "
          f"{max(population.reserved_after, default=0):.2f}s")
    assert population.failures == []
    assert population.closes.get(1011, 0) == 0 and set(population.closes) <= {1012}
    drained = sum(population.closes.values())
    assert drained >= 3  # every drain closed some open connections with 1012
    assert len(population.reserved_after) == drained  # and each of those chatted again
    assert max(population.reserved_after) < RESERVED_WITHIN, population.reserved_after
    assert population.newcomers > 0
    # Whatever reached a draining instance before HAProxy's check was replayed by HAProxy
    # (retry-on 503): no client needed a second handshake of its own.
    assert population.retried == 0
    assert all(r["status"] == "UP" for r in proxy.stats().values())


async def _restart(i: int, fleet: list[BackendProcess], backends: list[BackendProcess],
                   proxy: HAProxy, tmp_path: Path, redis_url: str,
                   namespace: str) -> dict[str, object]:
    """Drain instance ``i``, restart it slowly, and check HAProxy's routing throughout."""
    sent_before = int(proxy.server(i)["stot"])
    fleet[i].signal(signal.SIGTERM)
    await async_wait_until(lambda: proxy.server(i)["status"].startswith("DOWN"), 10,
                           interval=0.02, what=f"haproxy to take instance {i + 1} out")
    sent_at_down = int(proxy.server(i)["stot"])
    code = await asyncio.to_thread(fleet[i].wait_exit)
    assert code == 0, fleet[i].log()
    # While it drained and exited, HAProxy sent it nothing new.
    assert int(proxy.server(i)["stot"]) == sent_at_down

    started = fleet[i] = backend(tmp_path, i, redis_url, namespace, fleet[i].port, services=3)
    backends.append(started)
    await asyncio.to_thread(started.start, True)
    assert started.get("/health/ready")[0] == 503  # listening, still starting
    await async_wait_until(lambda: proxy.server(i)["status"] == "UP", 30, interval=0.05,
                           what=f"haproxy to put instance {i + 1} back")
    status, body = started.get("/health/ready")
    assert status == 200 and body["state"] == "ready", body
    # Nothing reached its gate while it was starting: no hold, no rejection.
    assert body["queue"]["held_total"] == 0 and body["rejected"] == {}, body
    assert body["admitted"].get("after_hold", 0) == 0, body
    return {"instance": i + 1, "sent_between_sigterm_and_down": sent_at_down - sent_before}

