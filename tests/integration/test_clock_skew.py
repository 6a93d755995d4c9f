"""Clock skew and clock steps, against a real redis-server (issue 19, item 9).

Every time compared across processes is on the Redis server's clock: an owner writes its
``heartbeat_at`` (and its score in ``N:instances``) on it, learned from ``TIME``; the
fleet view, ``coordinator check``, the lease and admission scripts and a follower judge
liveness on it. So an owner whose host clock is far off (here twice its TTL, either way)
is live to everyone, and a step of a host's clock blocks no signed follower.

The skew is the test process's: ``time.time`` is shifted (every owner and follower here
runs in this process, so they share the skewed clock, as an owner and its followers share
a host); the reader is given the true time, as a reader on another host would have it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as redis

from coordinator import Coordinator
from coordinator.contract.keys import Keys
from coordinator.fleet.leases import LEASED, REFUSED, SKEW, FleetLeases
from coordinator.fleet.view import fleet_snapshot
from coordinator.gate.pacing import ADMIT
from tests.support import (
    RedisServer,
    async_wait_until,
    cli_env,
    instance_record,
    instance_settings,
    put_record,
    run_cli,
    run_phases,
)

pytestmark = pytest.mark.redis

TTL = 10.0
KEY = "clock-skew-test-key"
REAL_TIME: Callable[[], float] = time.time


@pytest.fixture
def skew(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """This process's wall clock, ``skew["by"]`` seconds off the true time (Redis')."""
    shift = {"by": 0.0}
    monkeypatch.setattr(time, "time", lambda: REAL_TIME() + shift["by"])
    return shift


@pytest.fixture(params=[-2 * TTL, 2 * TTL], ids=["behind", "ahead"])
async def skewed_owner(request: pytest.FixtureRequest, skew: dict[str, float],
                       redis_server: RedisServer, namespace: str) -> AsyncIterator[Coordinator]:
    """A ready owner (heartbeat 0.5 s, TTL 10 s) whose host clock is 2 x TTL off."""
    skew["by"] = request.param
    owner = Coordinator(instance_settings(redis_server.url, namespace, "skewed",
                                          heartbeat_interval=0.5, instance_ttl=TTL))
    async with owner:
        await run_phases(owner, "init", "services")
        yield owner


async def _indexed(client: redis.Redis, keys: Keys) -> bool:
    return await client.zscore(keys.instances, "skewed") is not None


async def test_an_owner_with_a_skewed_clock_is_listed_and_not_pruned(
        skewed_owner: Coordinator, client: redis.Redis, namespace: str) -> None:
    """Fails without the fix (owner behind): the reader judged ``heartbeat_at`` (the
    owner's clock) against its own, 20 s apart, so every snapshot left the live owner out
    and pruned it from the index."""
    keys = Keys(namespace)
    await async_wait_until(lambda: _indexed(client, keys), 5, what="the owner's record")

    async def listed() -> bool:
        doc = await fleet_snapshot(client, keys, now=REAL_TIME())
        return [r["id"] for r in doc["instances"]] == ["skewed"]

    await async_wait_until(listed, 5, what="the skewed owner in a snapshot")
    for _ in range(3):  # snapshot after snapshot: listed, and its index entry kept
        doc = await fleet_snapshot(client, keys, now=REAL_TIME())
        assert [r["id"] for r in doc["instances"]] == ["skewed"]
        assert 0 <= doc["instances"][0]["heartbeat_age"] < TTL
        assert await _indexed(client, keys)


async def test_a_skewed_owner_is_live_to_coordinator_check(
        skewed_owner: Coordinator, client: redis.Redis, redis_server: RedisServer,
        namespace: str) -> None:
    """``coordinator check``, run as a process of its own (the true clock, as on another
    host), says ready. Fails without the fix (owner behind): "not ready: last heartbeat
    20 s ago, older than its ttl"."""
    keys = Keys(namespace)
    await async_wait_until(lambda: _indexed(client, keys), 5, what="the owner's record")
    env = cli_env(redis_server.url, namespace)
    done = await asyncio.to_thread(run_cli, "check", "--instance", "skewed", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skewed: ready" in done.stdout


async def test_a_skewed_owners_leases_count_against_the_fleet_cap(
        skewed_owner: Coordinator, client: redis.Redis, namespace: str) -> None:
    """ACQUIRE at the cap removes the leases of instances with no heartbeat in the index
    within COORD_INSTANCE_TTL + SKEW of the server's clock. Fails without the fix (owner
    behind): its index score was its own clock, 20 s behind, so its lease was taken for a
    dead instance's and purged, and a second hold got in over a cap of one."""
    keys = Keys(namespace)
    await async_wait_until(lambda: _indexed(client, keys), 5, what="the owner's record")
    mine = FleetLeases(client, keys.leases, "skewed", 1, liveness=TTL + SKEW)
    other = FleetLeases(client, keys.leases, "other", 1, liveness=TTL + SKEW)
    try:
        assert await mine.acquire(1, 30.0) == LEASED
        assert await other.acquire(1, 30.0) == REFUSED
    finally:
        await mine.close()
        await other.close()


async def test_a_skewed_owner_counts_live_in_the_admission_script(
        skewed_owner: Coordinator, client: redis.Redis, namespace: str) -> None:
    """ADMIT counts the instances whose index score is within the liveness window of the
    server's clock. Fails without the fix (owner behind): 0 live instances."""
    keys = Keys(namespace)
    await async_wait_until(lambda: _indexed(client, keys), 5, what="the owner's record")
    admit = client.register_script(ADMIT)
    _granted, _wait, live = await admit(keys=[keys.admit, keys.instances],
                                        args=[10.0, 4.0, 1, TTL])
    assert int(live) == 1


async def _stepped_follower_and_owner(redis_server: RedisServer, namespace: str,
                                      skew: dict[str, float], *,
                                      waiting: bool) -> Coordinator:
    """A signed follower, started; then the host's clock (owner's and follower's) steps
    back 60 s; then its owner starts and becomes ready. The follower, once it is ready."""
    follower = Coordinator(instance_settings(redis_server.url, namespace, "stepped", KEY,
                                             heartbeat_interval=0.5, instance_ttl=TTL),
                           role="follower")
    async with follower:
        await async_wait_until(lambda: follower.redis_ok, 5, what="the follower's link")
        waiter = asyncio.create_task(follower.wait_ready(30)) if waiting else None
        skew["by"] = -60.0  # NTP steps the host's clock back a minute
        owner = Coordinator(instance_settings(redis_server.url, namespace, "stepped", KEY,
                                              heartbeat_interval=0.5, instance_ttl=TTL))
        async with owner:
            await run_phases(owner, "init", "services")
            if waiter is not None:
                assert await asyncio.wait_for(waiter, 10)
            await async_wait_until(lambda: follower.is_ready, 10, what="the follower ready")
            assert follower.drops.total == 0
    return follower


async def test_a_signed_follower_with_someone_held_is_released_after_a_step_back(
        skew: dict[str, float], redis_server: RedisServer, namespace: str) -> None:
    """With someone waiting, the follower re-reads the record. Fails without the fix:
    the owner's events and records were stamped "before" the follower started by the
    stepped clock, and a follower with a signing key trusted no such evidence, so it
    stayed starting for 60 s (the wait timed out at 10 s)."""
    await _stepped_follower_and_owner(redis_server, namespace, skew, waiting=True)


async def test_a_signed_follower_trusts_events_after_a_step_back(
        skew: dict[str, float], redis_server: RedisServer, namespace: str) -> None:
    """With nobody waiting there is no re-read: the events alone make the follower ready.
    Fails without the follower's part of the fix (its start taken on the host's clock as
    it read then, 60 s ahead of the events' ``ts`` after the step), even with the owner's
    records on the Redis clock."""
    await _stepped_follower_and_owner(redis_server, namespace, skew, waiting=False)


async def test_a_follower_on_a_host_ahead_of_redis_follows_a_live_record(
        skew: dict[str, float], redis_server: RedisServer, client: redis.Redis,
        namespace: str) -> None:
    """A follower whose host clock is 2 x TTL ahead of Redis reads a ready record that was
    just written (``heartbeat_at`` on the server's clock; no event published). Fails
    without the fix: it judged the record's liveness on its own clock, found it 20 s old,
    and ignored it."""
    skew["by"] = 2 * TTL
    follower = Coordinator(instance_settings(redis_server.url, namespace, "ahead",
                                             heartbeat_interval=0.5, instance_ttl=TTL),
                           role="follower")
    async with follower:
        await async_wait_until(lambda: follower.redis_ok, 5, what="the follower's link")
        waiter = asyncio.create_task(follower.wait_ready(30))
        secs, usecs = await client.time()
        await put_record(client, Keys(namespace), instance_record(
            "ahead", secs + usecs / 1e6, state="ready", phase="services", index=2,
            beat_age=0.0, ttl=TTL, phases_total=2, started_at=None))
        assert await asyncio.wait_for(waiter, 10)
