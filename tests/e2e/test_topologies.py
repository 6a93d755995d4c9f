"""A change of Redis under a starting fleet, followed without a restart: a Redis Cluster
moving the namespace's slot to another master (resharding), and Sentinel promoting the
replica (failover). Real backends, real WebSocket clients, nothing set but the URL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as redis

from coordinator._redis.client import make_redis
from coordinator.contract.keys import Keys
from coordinator.contract.record import as_text
from harness.topologies import Cluster, SentinelSet
from tests.support import (
    CHAT,
    Outcome,
    assert_clean_rejection,
    async_wait_until,
    backend_env,
    chat,
    equals,
    reach_services,
    start_all,
    tally,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

CAP = 4  # COORD_FLEET_MAX_QUEUE: held connections, fleet-wide


def fleet_env(url: str, namespace: str, name: str) -> dict[str, str]:
    return backend_env(redis_url=url, namespace=namespace, instance=name,
                       COORD_HEARTBEAT_INTERVAL="0.3", COORD_FLEET_MAX_QUEUE=str(CAP),
                       COORD_MAX_QUEUE_TIME="60",
                       BACKEND_PHASE_DURATIONS="services=15")  # outlasts the change


async def registered(client: redis.Redis, namespace: str, names: list[str]) -> bool:
    """Every instance's record and index entry are on the server ``client`` reaches now."""
    keys = Keys(namespace)
    try:
        indexed = {as_text(m) for m in await client.zrange(keys.instances, 0, -1)}
        return indexed >= set(names) and all([await client.exists(keys.instance(n))
                                              for n in names])
    except redis.RedisError:  # mid-change
        return False


async def held_leases(client: redis.Redis, namespace: str) -> int | None:
    try:
        return int(await client.zcard(Keys(namespace).leases))
    except redis.RedisError:  # mid-change
        return None


async def through_a_change(url: str, namespace: str, start_backend: Any,
                           change: Callable[[], object]) -> list[Outcome]:
    """Two instances in their ``services`` phase; 2 * CAP clients arrive (CAP held, the
    rest refused: the fleet cap); Redis changes under them (``change``, in a thread);
    then CAP more arrive while the held ones still wait. Returns every outcome, once the
    instances are ready and have released what they held."""
    names = [f"{namespace}-a", f"{namespace}-b"]
    backends = await start_all(start_backend, [fleet_env(url, namespace, n) for n in names])
    await asyncio.gather(*(reach_services(b) for b in backends))
    client = make_redis(url, namespace=namespace)
    try:
        await async_wait_until(lambda: registered(client, namespace, names), 10,
                               what="both instances registered")
        first = [asyncio.create_task(chat(backends[i % 2].ws_url, f"{names[i % 2]} {i}",
                                          open_timeout=60)) for i in range(2 * CAP)]
        await async_wait_until(lambda: sum(t.done() for t in first) == CAP, 20,
                               what=f"{CAP} refused by the fleet cap")
        assert await held_leases(client, namespace) == CAP
        await asyncio.to_thread(change)
        # Followed without a restart: both write their records where the namespace lives
        # now, and the holds' leases are there (renewed, or replicated) for the cap.
        await async_wait_until(lambda: registered(client, namespace, names), 30,
                               what="both instances registered after the change")
        await async_wait_until(lambda: equals(held_leases(client, namespace), CAP), 30,
                               what=f"{CAP} held leases after the change")
        assert sum(t.done() for t in first) == CAP  # the held ones still wait
        second = await asyncio.gather(*(chat(b.ws_url, "late", open_timeout=60)
                                        for b in backends for _ in range(CAP // 2)))
        return [*await asyncio.gather(*first), *second]
    finally:
        await client.aclose()


def assert_followed(outcomes: list[Outcome]) -> None:
    counts = tally(outcomes)
    assert not any("1011" in k for k in counts), counts
    assert counts.get(CHAT) == CAP, counts  # every held connection released, none lost
    for outcome in outcomes:
        if outcome.kind == CHAT:
            assert outcome.welcome is not None and outcome.echo is not None, outcome
        else:  # the cap held before, through and after the change
            assert_clean_rejection(outcome, "http", "fleet_cap")


async def test_a_cluster_moving_the_namespaces_slot_mid_startup_is_followed(
        cluster: Cluster, namespace: str, start_backend: Any) -> None:
    to = (cluster.owner(namespace) + 1) % len(cluster.nodes)
    outcomes = await through_a_change(cluster.url, namespace, start_backend,
                                      lambda: cluster.move(namespace, to))
    assert cluster.owner(namespace) == to
    assert_followed(outcomes)


async def test_a_sentinel_failover_mid_startup_is_followed(
        sentinel: SentinelSet, namespace: str, start_backend: Any) -> None:
    before = sentinel.master_port()
    outcomes = await through_a_change(sentinel.url, namespace, start_backend,
                                      sentinel.failover)
    assert sentinel.master_port() != before
    assert_followed(outcomes)
