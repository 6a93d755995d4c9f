"""The fleet admission rate against a real redis-server: one token bucket in N:admit for
every instance of the namespace, refilled on the server's clock; the excess held, then
admitted at the rate; with Redis unreachable, each instance at its share."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from coordinator import ConnectionGate, Coordinator, Settings
from coordinator._redis.client import make_redis
from coordinator.contract.keys import Keys
from coordinator.contract.outcomes import Admitted
from coordinator.fleet.leases import LEASED
from coordinator.gate.pacing import ADMIT
from tests.support import FakeWebSocket, RedisServer, async_wait_until, echo_app, knock

pytestmark = pytest.mark.redis

RATE, BURST = 10.0, 4.0


@contextlib.asynccontextmanager
async def ready_gates(url: str, namespace: str, count: int,
                      fleet_admit_rate_override: tuple[float, float] = (RATE, BURST),
                      linked: bool = True, **kw: Any) -> AsyncIterator[list[ConnectionGate]]:
    """``count`` ready instances of one namespace, each with its gate."""
    rate, burst = fleet_admit_rate_override
    coords = [Coordinator(Settings(redis_url=url, namespace=namespace, instance_id=f"i{n}",
                                   phases=("init", "services"), ready_phase="services",
                                   heartbeat_interval=0.2, instance_ttl=2.0,
                                   fleet_admit_rate=rate, fleet_admit_burst=burst, **kw))
              for n in range(count)]
    gates = [ConnectionGate(echo_app, c) for c in coords]
    for coord in coords:
        await coord.start()
        if linked:  # else the pacer, ready before its link, rightly admits at a local share
            await async_wait_until(functools.partial(getattr, coord, "redis_ok"), 10,
                                   what="the Redis link")
        for name in ("init", "services"):
            async with coord.phase(name):
                pass
    try:
        yield gates
    finally:
        for coord in coords:
            await coord.stop()


async def admitted_within_the_rate(sockets: list[FakeWebSocket], since: float) -> None:
    """Wait until all are admitted, checking at every step that no more than the burst
    plus the rate times the time since ``since`` (taken before the first instance became
    ready: the bucket's first draw, from which it refills) got in. The bound only gets
    looser under load: a slow machine admits later, never more. (Measured from the
    first admission instead, it failed on a slow start: what the bucket refilled while
    the second instance started, that instance fetched as its share, rightly.)"""
    deadline = time.monotonic() + 20
    while True:
        admitted = sum(1 for s in sockets if s.accepted)
        now = time.monotonic()
        assert admitted <= BURST + RATE * (now - since) + 1, (admitted, now - since)
        if admitted == len(sockets):
            return
        assert now < deadline, f"{admitted} of {len(sockets)} admitted"
        await asyncio.sleep(0.01)


async def test_two_instances_share_one_bucket_and_hold_the_excess_until_a_token(
        redis_server: RedisServer, namespace: str) -> None:
    since = time.monotonic()
    async with ready_gates(redis_server.url, namespace, 2) as gates:
        started = time.monotonic()
        (a, a_tasks), (b, b_tasks) = knock(gates[0], 15), knock(gates[1], 15)
        await admitted_within_the_rate(a + b, since)
        # 30 through one fleet bucket: about (30 - burst) / rate seconds, not 2x faster.
        assert time.monotonic() - started >= (30 - BURST - 2) / RATE
        assert all(g.state.rejected == {} for g in gates)  # held, not rejected
        assert sum(g.pacer.paced for g in gates) >= 30 - BURST
        for s in a + b:
            s.disconnect()
        await asyncio.gather(*a_tasks, *b_tasks)


async def test_absurd_bucket_data_in_redis_starts_from_a_full_bucket_not_a_larger_one(
        redis_server: RedisServer, namespace: str) -> None:
    client: Any = make_redis(redis_server.url, namespace=namespace)
    await client.hset(Keys(namespace).admit, mapping={"tokens": "1e300", "at": "1e12"})
    await client.aclose()
    since = time.monotonic()
    async with ready_gates(redis_server.url, namespace, 1) as (gate,):
        sockets, tasks = knock(gate, 12)
        await admitted_within_the_rate(sockets, since)
        for s in sockets:
            s.disconnect()
        await asyncio.gather(*tasks)


async def test_with_redis_unreachable_each_instance_admits_at_its_share(namespace: str) -> None:
    since = time.monotonic()
    async with ready_gates("redis://127.0.0.1:1/0", namespace, 1, linked=False) as (gate,):
        assert not gate.coord.redis_ok
        sockets, tasks = knock(gate, 12)
        await admitted_within_the_rate(sockets, since)  # the one live instance: the whole rate
        assert all(s.accepted for s in sockets)
        for s in sockets:
            s.disconnect()
        await asyncio.gather(*tasks)


async def test_the_bucket_counts_the_live_instances_for_their_share(
        redis_server: RedisServer, namespace: str) -> None:
    async with ready_gates(redis_server.url, namespace, 3) as gates:
        # More than the allotment fetched at ready (when it was the only one live): the
        # next fetch learns the fleet's size.
        sockets, tasks = knock(gates[0], int(BURST) + 2)
        await async_wait_until(lambda: all(s.accepted for s in sockets), 10, what="admitted")
        assert gates[0].pacer.live == 3  # what the local share divides by if Redis goes
        assert gates[0].pacer.share == max(1, int(BURST / 3))
        for s in sockets:
            s.disconnect()
        await asyncio.gather(*tasks)


async def test_within_the_rate_more_than_the_hold_cap_at_once_are_all_admitted_at_once(
        redis_server: RedisServer, namespace: str) -> None:
    """The instance fetches its share of the burst ahead: handshakes within the rate go
    straight through, without a round trip, whatever the hold cap; they take no fleet
    lease either (the fleet cap bounds what starting instances hold)."""
    async with ready_gates(redis_server.url, namespace, 1, max_queue=5,
                           fleet_max_queue=2) as (gate,):
        await async_wait_until(lambda: gate.pacer.allotment >= BURST, 10,
                               what="the allotment fetched at ready")
        sockets, tasks = knock(gate, int(BURST))
        await async_wait_until(lambda: all(s.accepted for s in sockets), 10, what="admitted")
        assert gate.state.admitted[Admitted.IMMEDIATE] == BURST and not gate.state.rejected
        assert gate.state.leases.outcomes[LEASED] == 0
        for s in sockets:
            s.disconnect()
        await asyncio.gather(*tasks)


async def test_a_burst_larger_than_the_hold_cap_is_admitted_in_full(
        redis_server: RedisServer, namespace: str) -> None:
    async with ready_gates(redis_server.url, namespace, 1, max_queue=5,
                           fleet_admit_rate_override=(1000.0, 1000.0)) as (gate,):
        await async_wait_until(lambda: gate.pacer.allotment >= 100, 10,
                               what="the allotment fetched at ready")
        sockets, tasks = knock(gate, 20)  # 20 at once, 5 slots: all within the rate
        await async_wait_until(lambda: all(s.accepted for s in sockets), 10, what="admitted")
        assert not gate.state.rejected, gate.state.rejected
        for s in sockets:
            s.disconnect()
        await asyncio.gather(*tasks)


async def test_a_time_stored_a_moment_ahead_is_not_read_as_a_fresh_bucket(
        redis_server: RedisServer, namespace: str) -> None:
    """Two instances' calls microseconds apart: the bucket's time stored by the first
    may read as a moment ahead of the second's clock (Lua's tostring kept 14 digits,
    rounding up to 50 us). That is now, not absurd data: the bucket stays empty, where
    a reset to a full bucket let a wave through at twice the rate (found under load,
    the two pumps waking together). The time is stored to the microsecond now."""
    client: Any = make_redis(redis_server.url, namespace=namespace)
    keys = Keys(namespace)
    try:
        secs, usecs = await client.time()
        ahead = secs + usecs / 1e6 + 0.5
        await client.hset(keys.admit, mapping={"tokens": "0", "at": f"{ahead:.6f}"})
        admit = client.register_script(ADMIT)
        granted, _wait, _live = await admit(keys=[keys.admit, keys.instances],
                                            args=[RATE, BURST, int(BURST), 10])
        assert int(granted) == 0
        stored = await client.hget(keys.admit, "at")
        assert re.fullmatch(rb"\d+\.\d{6}", stored), stored
    finally:
        await client.aclose()
