"""A Redis that hangs instead of failing: a real redis-server stopped with SIGSTOP, or
paused with ``CLIENT PAUSE``. A killed server refuses at once; a hung one accepts and
never answers, so only the coordinator's own timeouts can end a wait (docs/guide.md,
"Redis outages": commands time out after 2 s, connect after 1 s; "Fleet cap": an
acquire that takes over 1 s falls back to the local cap).

Durations are the behaviour here, so they are asserted against those promised bounds
(as the guide states them): never earlier than the bound less ``EARLY`` (the wait is the
timeout's, not an error that came sooner), and never later than the bound plus ``SLACK``.
Each wait also runs under a deadline of its own, so that a timeout that is gone fails
the test in seconds instead of hanging it.
"""

from __future__ import annotations

import asyncio
import re
import select
import socket
import time
from collections.abc import Iterator

import pytest
import redis.asyncio as redis

from coordinator import Coordinator, Settings
from coordinator._redis import client as redis_client
from coordinator._redis.client import make_redis
from coordinator.contract.keys import Keys
from coordinator.contract.record import as_text
from coordinator.fleet.leases import ACQUIRE_TIMEOUT, LEASED, LOCAL, FleetLeases
from tests.support import ROOT, RedisServer, async_wait_until, equals

pytestmark = pytest.mark.redis

# A timeout fires on the event loop's clock; it cannot come sooner than asked, but a
# timer's granularity and the measurement around it can shave a few milliseconds.
EARLY = 0.05
# Past the bound: the event loop's scheduling on a loaded 2-core CI machine shared with
# other work (measured: under 10 ms when idle). It must stay below the gap between the
# 1 s timeouts and the 2 s one, or a 1 s timeout that is gone (the 2 s one firing
# instead) would pass.
SLACK = 0.5
HANG_DEADLINE = 10.0  # a wait that no timeout ends: fail here, not at pytest's timeout


def assert_took(elapsed: float, bound: float) -> None:
    assert bound - EARLY <= elapsed <= bound + SLACK, (elapsed, bound)


def documented_timeouts() -> tuple[float, float]:
    """(command, connect) timeouts, as the guide's "Redis outages" section states them."""
    text = " ".join((ROOT / "docs" / "guide.md").read_text().split())
    found = re.search(r"Commands time out after ([\d.]+) s \(connect ([\d.]+) s\)", text)
    assert found, "docs/guide.md states the Redis timeouts"
    return float(found[1]), float(found[2])


COMMAND_TIMEOUT, CONNECT_TIMEOUT = documented_timeouts()


def test_the_timeouts_are_the_documented_ones() -> None:
    assert (COMMAND_TIMEOUT, CONNECT_TIMEOUT) == (redis_client.COMMAND_TIMEOUT,
                                                  redis_client.CONNECT_TIMEOUT)


def documented_acquire_timeout() -> float:
    """"an acquire that fails or takes over N s" (docs/guide.md, "Fleet cap")."""
    text = " ".join((ROOT / "docs" / "guide.md").read_text().split())
    found = re.search(r"an acquire that fails or takes over ([\d.]+) s", text)
    assert found, "docs/guide.md states the acquire timeout"
    return float(found[1])


DOCUMENTED_ACQUIRE_TIMEOUT = documented_acquire_timeout()


@pytest.fixture
def frozen_on_exit(own_redis: RedisServer) -> Iterator[RedisServer]:
    """``own_redis``, thawed at the end whatever happened (SIGKILL works either way, but a
    stopped server left behind would hang anything else that reached it)."""
    yield own_redis
    own_redis.thaw()


async def test_a_command_to_a_frozen_redis_times_out_after_2s(
        frozen_on_exit: RedisServer) -> None:
    client = make_redis(frozen_on_exit.url)
    try:
        assert await client.ping()
        frozen_on_exit.freeze()
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            async with asyncio.timeout(HANG_DEADLINE):
                await client.ping()
        assert_took(time.monotonic() - started, COMMAND_TIMEOUT)
        frozen_on_exit.thaw()
        assert await client.ping()  # the same client recovers: a new connection
    finally:
        await client.aclose()


async def test_a_command_to_a_paused_redis_times_out_after_2s(own_redis: RedisServer) -> None:
    """``CLIENT PAUSE ... ALL``: the server runs, but holds every client's commands."""
    admin = redis.Redis.from_url(own_redis.url)
    client = make_redis(own_redis.url)
    try:
        assert await client.ping()
        pause_ms = int((COMMAND_TIMEOUT + 1) * 1000)
        await admin.execute_command("CLIENT", "PAUSE", str(pause_ms), "ALL")
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            async with asyncio.timeout(HANG_DEADLINE):
                await client.ping()
        assert_took(time.monotonic() - started, COMMAND_TIMEOUT)
        # The pause ends by itself (CLIENT UNPAUSE would be held too): then it answers.
        await async_wait_until(lambda: _answers(client), 10, what="the pause to end")
    finally:
        await client.aclose()
        await admin.aclose()


async def _answers(client: redis.Redis) -> bool:
    try:
        return bool(await client.ping())
    except redis.TimeoutError:
        return False


def fill_the_listen_queue(port: int) -> list[socket.socket]:
    """Connections a frozen server will never accept, until the kernel's queue for it is
    full and it drops the next SYN: from then on a connect hangs. (The server runs with
    ``--tcp-backlog 1``, so a few suffice.)"""
    held: list[socket.socket] = []
    for _ in range(64):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        held.append(sock)
        _, writable, _ = select.select([], [sock], [], 0.2)
        if not writable:  # this one's SYN went unanswered: the queue is full
            return held
    for sock in held:
        sock.close()
    raise AssertionError("the listen queue never filled")


async def test_connecting_to_a_frozen_redis_times_out_after_1s() -> None:
    server = RedisServer(extra=("--tcp-backlog", "1")).start()
    held: list[socket.socket] = []
    client = make_redis(server.url)
    try:
        server.freeze()
        held = fill_the_listen_queue(server.port)
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError, match="connecting"):
            async with asyncio.timeout(HANG_DEADLINE):
                await client.ping()
        assert_took(time.monotonic() - started, CONNECT_TIMEOUT)
    finally:
        for sock in held:
            sock.close()
        server.thaw()
        server.kill()
        await client.aclose()


async def test_a_slow_acquire_falls_back_to_the_local_cap_and_the_fleet_cap_returns(
        frozen_on_exit: RedisServer, namespace: str) -> None:
    client = make_redis(frozen_on_exit.url)
    key = Keys(namespace).leases
    # The link's own view stays "up": only the acquire's timeout can notice the hang.
    leases = FleetLeases(client, key, "slow", cap=5)
    try:
        assert await leases.acquire(1, 30) == LEASED
        frozen_on_exit.freeze()
        started = time.monotonic()
        async with asyncio.timeout(HANG_DEADLINE):
            assert await leases.acquire(2, 30) == LOCAL  # hold under the local cap alone
        assert_took(time.monotonic() - started, DOCUMENTED_ACQUIRE_TIMEOUT)
        assert ACQUIRE_TIMEOUT == DOCUMENTED_ACQUIRE_TIMEOUT
        assert leases.mode == "local" and leases.errors >= 1
        frozen_on_exit.thaw()
        assert await leases.acquire(3, 30) == LEASED
        assert leases.mode == "fleet"
        # Whatever the timed-out acquire left in Redis (its script may still have run
        # once the server resumed) is released: only the granted leases remain.
        leases.flush()

        async def held_in_redis() -> set[str]:
            return {as_text(m) for m in await client.zrange(key, 0, -1)}

        await async_wait_until(lambda: equals(held_in_redis(), leases.held), 10,
                               what="Redis to hold exactly the granted leases")
        assert len(leases.held) == 2
    finally:
        await leases.close()
        await client.aclose()


async def test_an_owner_never_waits_for_a_frozen_redis_and_rejoins_when_it_resumes(
        frozen_on_exit: RedisServer, namespace: str) -> None:
    """An owner whose Redis hangs mid-startup: its phases and its ready transition go on
    at once; the link notices within a heartbeat plus a command timeout, and when Redis
    resumes the instance is back in it, as it is now."""
    heartbeat = 0.2
    coord = Coordinator(Settings(redis_url=frozen_on_exit.url, namespace=namespace,
                                 instance_id="frozen-owner", phases=("init", "services"),
                                 ready_phase="services", heartbeat_interval=heartbeat,
                                 instance_ttl=30))
    reader = redis.Redis.from_url(frozen_on_exit.url, decode_responses=True)
    await coord.start()
    try:
        assert coord.redis_ok
        async with coord.phase("init"):
            pass
        frozen_on_exit.freeze()
        async with asyncio.timeout(0.5):  # nothing in a transition waits for Redis
            async with coord.phase("services"):
                pass
        assert coord.is_ready
        started = time.monotonic()
        await async_wait_until(lambda: not coord.redis_ok, heartbeat + 10,
                               what="the link to notice the hang")
        # Noticed by the next heartbeat's command timing out.
        assert time.monotonic() - started <= heartbeat + COMMAND_TIMEOUT + SLACK
        frozen_on_exit.thaw()
        await async_wait_until(lambda: coord.redis_ok, 15, what="the link back")

        async def republished() -> bool:
            record = await reader.hgetall(f"{{{namespace}}}:instance:frozen-owner")
            return record.get("state") == "ready" and record.get("redis") == "ok"

        await async_wait_until(republished, 10, what="the hash to say ready again")
    finally:
        await coord.stop()
        await reader.aclose()
