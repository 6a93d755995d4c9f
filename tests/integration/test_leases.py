"""The fleet cap's leases against a real redis-server: the scripts, and the gate's use of them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis

from coordinator import ConnectionGate, Coordinator, Settings
from coordinator._redis.client import make_redis
from coordinator.contract.keys import Keys
from coordinator.contract.record import as_text
from coordinator.contract.rejection import Reason
from coordinator.fleet.leases import (
    ACQUIRE_TIMEOUT,
    LEASED,
    LOCAL,
    LONGEST_HOLD,
    REFUSED,
    FleetLeases,
)
from tests.support import (
    FakeWebSocket,
    RedisServer,
    async_wait_until,
    echo_app,
    equals,
    knock,
    record_of,
)

pytestmark = pytest.mark.redis


def leases_for(client: redis.Redis, namespace: str, instance: str, cap: int | None,
               **kw: Any) -> FleetLeases:
    return FleetLeases(client, Keys(namespace).leases, instance, cap, **kw)


async def server_time(client: redis.Redis) -> float:
    seconds, micros = await client.time()
    return seconds + micros / 1e6


def short(members: set[str]) -> set[str]:
    """``<id>:<process>.<conn>`` as ``<id>:<conn>``: each test's leases come from one process."""
    return {f"{m.split(':', 1)[0]}:{m.rsplit('.', 1)[1]}" for m in members}


async def members(client: redis.Redis, namespace: str) -> set[str]:
    return short({as_text(m) for m in await client.zrange(Keys(namespace).leases, 0, -1)})


# -- the scripts ----------------------------------------------------------------------


async def test_acquire_grants_up_to_the_cap_and_release_frees_a_slot(
        client: redis.Redis, namespace: str) -> None:
    leases = leases_for(client, namespace, "a", cap=2)
    assert [await leases.acquire(n, 5) for n in (1, 2, 3)] == [LEASED, LEASED, REFUSED]
    assert await members(client, namespace) == {"a:1", "a:2"}
    assert short(leases.held) == {"a:1", "a:2"}
    leases.release(1)
    await async_wait_until(
        lambda: equals(members(client, namespace), {"a:2"}), 5, what="a:1 released")
    assert await leases.acquire(3, 5) == LEASED
    assert leases.outcomes == {LEASED: 3, REFUSED: 1, LOCAL: 0}
    await leases.close()


async def test_the_cap_holds_across_instances_under_concurrent_acquires(
        redis_server: RedisServer, namespace: str) -> None:
    clients = [make_redis(redis_server.url, namespace=namespace) for _ in range(3)]
    fleet = [leases_for(c, namespace, f"i{n}", cap=7) for n, c in enumerate(clients)]
    outcomes = await asyncio.gather(*(lease.acquire(conn, 5) for lease in fleet
                                      for conn in range(1, 21)))
    assert outcomes.count(LEASED) == 7
    assert outcomes.count(REFUSED) == 53
    held = short(set().union(*(lease.held for lease in fleet)))
    assert await members(clients[0], namespace) == held
    for lease, c in zip(fleet, clients, strict=True):
        await lease.close()
        await c.aclose()


async def test_leases_written_microseconds_apart_all_count_against_the_cap(
        client: redis.Redis, namespace: str) -> None:
    """Three holds at once against a cap of two: exactly one refused, every time. The
    purge of impossible leases once formatted its bound with Lua's 14 digits (a tenth of a
    millisecond), below a lease written a moment before: that lease was dropped and the
    cap let a third hold in, in about half of these trials."""
    for trial in range(50):
        await client.delete(Keys(namespace).leases)
        leases = leases_for(client, namespace, "i", cap=2, max_hold=30.0)
        outcomes = await asyncio.gather(*(leases.acquire(n, 30.0) for n in range(3)))
        assert sorted(outcomes) == [LEASED, LEASED, REFUSED], (trial, outcomes)
        await leases.close()


async def test_expiry_comes_from_the_redis_server_clock_not_the_instance_clock(
        client: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)  # a badly skewed host
    leases = leases_for(client, namespace, "skewed", cap=5, margin=2.0)
    before = await server_time(client)
    assert await leases.acquire(1, 10) == LEASED
    after = await server_time(client)
    score = await client.zscore(Keys(namespace).leases, leases.member(1))
    assert score is not None
    # The script's TIME fell between the two reads: expiry = then + 10 s hold + 2 s margin.
    assert before + 12 <= score <= after + 12, (before, score, after)
    await leases.close()


async def test_releases_made_while_the_link_is_down_are_sent_when_it_is_back(
        client: redis.Redis, namespace: str) -> None:
    link = {"up": True}
    leases = leases_for(client, namespace, "blip", cap=2, link_up=lambda: link["up"])
    assert [await leases.acquire(i, 30) for i in (1, 2)] == [LEASED, LEASED]
    link["up"] = False  # a blip: Redis keeps the leases, this instance cannot reach it
    leases.release(1)
    leases.release(2)
    await async_wait_until(lambda: leases._flusher is None or leases._flusher.done(), 5)
    assert await members(client, namespace) == {"blip:1", "blip:2"}  # nothing could be sent
    link["up"] = True
    leases.flush()  # what the coordinator does when its link comes back
    await async_wait_until(lambda: equals(members(client, namespace), set()), 5,
                           what="the queued releases to reach Redis")
    other = leases_for(client, namespace, "other", cap=2)
    assert await other.acquire(1, 5) == LEASED  # the fleet cap is free again, not in 32 s
    await leases.close()
    await other.close()


async def test_an_expired_lease_frees_its_slot_on_the_next_acquire(
        client: redis.Redis, namespace: str) -> None:
    crashed = leases_for(client, namespace, "crashed", cap=1, margin=0.0)
    assert await crashed.acquire(1, 2) == LEASED  # never released: the process "died"
    other = leases_for(client, namespace, "other", cap=1)
    assert await other.acquire(1, 5) == REFUSED
    await async_wait_until(lambda: equals(other.acquire(2, 5), LEASED), 10,
                           what="the crashed instance's lease to expire")
    assert await members(client, namespace) == {"other:2"}  # purged by the acquire itself
    await other.close()


async def test_scripts_are_reloaded_after_a_script_flush(
        client: redis.Redis, namespace: str) -> None:
    leases = leases_for(client, namespace, "a", cap=3)
    assert await leases.acquire(1, 5) == LEASED
    await client.script_flush()
    assert await client.script_exists(leases._acquire.sha) == [False]
    assert await leases.acquire(2, 5) == LEASED  # EVALSHA fails, redis-py loads it again
    assert await client.script_exists(leases._acquire.sha) == [True]
    await leases.close()
    assert await members(client, namespace) == set()


async def test_close_removes_this_instances_leases_and_no_one_elses(
        client: redis.Redis, namespace: str) -> None:
    mine = leases_for(client, namespace, "mine", cap=10)
    theirs = leases_for(client, namespace, "theirs", cap=10)
    for conn in (1, 2, 3):
        assert await mine.acquire(conn, 5) == LEASED
    assert await theirs.acquire(1, 5) == LEASED
    await mine.close()
    assert mine.held == set()
    assert await members(client, namespace) == {"theirs:1"}
    assert await mine.acquire(4, 5) == LOCAL  # closed: no new leases
    await theirs.close()


@pytest.mark.parametrize("when", ["before_the_script", "after_the_script_ran"])
async def test_a_cancelled_acquire_leaves_no_lease_behind(
        client: redis.Redis, namespace: str, when: str) -> None:
    """The acquire is cancelled at a chosen point, not at a delay that may miss it: while
    the script is yet to be sent, or once it has run in Redis (the lease is there) but
    before its reply reached the caller. Either way nothing is held, locally or in Redis."""
    leases = leases_for(client, namespace, "a", cap=5)
    script = leases._acquire
    parked = asyncio.Event()

    async def run_then_park(**kwargs: Any) -> Any:
        if when == "after_the_script_ran":
            await script(**kwargs)
        parked.set()
        await asyncio.Event().wait()  # the reply never comes: cancelled here

    leases._acquire = run_then_park  # type: ignore[assignment]
    task = asyncio.create_task(leases.acquire(1, 5))
    await asyncio.wait_for(parked.wait(), 5)
    ran = when == "after_the_script_ran"
    assert await members(client, namespace) == ({"a:1"} if ran else set())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leases.held == set()
    await async_wait_until(lambda: equals(members(client, namespace), set()), 5,
                           what="whatever the cancelled acquire left to be removed")
    await leases.close()


async def test_an_acquire_that_completes_holds_its_lease_locally_and_in_redis(
        client: redis.Redis, namespace: str) -> None:
    leases = leases_for(client, namespace, "a", cap=5)
    assert await leases.acquire(1, 5) == LEASED
    assert short(leases.held) == {"a:1"}
    assert await members(client, namespace) == {"a:1"}
    await leases.close()
    assert await members(client, namespace) == set()


async def test_redis_down_falls_back_to_local_quickly_and_says_so(
        own_redis: RedisServer, namespace: str) -> None:
    client = make_redis(own_redis.url)
    link = {"up": True}
    leases = leases_for(client, namespace, "a", cap=5, link_up=lambda: link["up"])
    assert await leases.acquire(1, 5) == LEASED
    assert leases.mode == "fleet"
    own_redis.kill()
    started = time.monotonic()
    assert await leases.acquire(2, 5) == LOCAL  # the link has not noticed yet: an error
    # A refused connection fails at once; never later than the acquire's promised bound
    # (ACQUIRE_TIMEOUT, 1 s) plus 0.5 s for scheduling on a loaded CI machine.
    assert time.monotonic() - started <= ACQUIRE_TIMEOUT + 0.5
    assert leases.errors >= 1
    assert leases.mode == "local"
    link["up"] = False
    assert await leases.acquire(3, 5) == LOCAL  # the link knows: no I/O at all
    own_redis.start()
    link["up"] = True  # the link came back: so does the fleet cap, before any acquire
    assert leases.mode == "fleet"
    assert await leases.acquire(4, 5) == LEASED
    assert leases.mode == "fleet"
    await leases.close()
    await client.aclose()


async def test_scripts_take_every_key_in_KEYS_and_no_cap_means_off(
        client: redis.Redis, namespace: str) -> None:
    from coordinator.fleet.leases import ACQUIRE, RELEASE
    for script in (ACQUIRE, RELEASE):  # cluster-safe: no key name is built inside Lua
        assert "KEYS[1]" in script and "KEYS[3]" not in script and ".." not in script
    assert "KEYS[2]" in ACQUIRE and "KEYS[2]" not in RELEASE
    off = leases_for(client, namespace, "a", cap=None)
    assert off.mode == "off"
    assert not off.enabled


# -- the gate ---------------------------------------------------------------------------


async def admitted_then_leave(sockets: list[FakeWebSocket],
                              tasks: list[asyncio.Task[None]]) -> None:
    await async_wait_until(lambda: all(s.accepted for s in sockets), 5, what="all admitted")
    for s in sockets:
        s.disconnect()
    await asyncio.gather(*tasks)


@contextlib.asynccontextmanager
async def gated(url: str, namespace: str, **kw: Any) -> AsyncIterator[tuple[Coordinator,
                                                                           ConnectionGate]]:
    """A started owner (phases init, services) and its gate; stopped afterwards."""
    coord = Coordinator(Settings(redis_url=url, namespace=namespace, instance_id="gated",
                                 phases=("init", "services"), ready_phase="services",
                                 heartbeat_interval=0.2, instance_ttl=2.0, **kw))
    await coord.start()
    try:
        yield coord, ConnectionGate(echo_app, coord)
    finally:
        await coord.stop()


async def test_gate_holds_with_a_lease_rejects_over_the_fleet_cap_and_releases_on_ready(
        redis_server: RedisServer, client: redis.Redis, namespace: str) -> None:
    async with gated(redis_server.url, namespace, fleet_max_queue=2, max_queue=10) as (coord,
                                                                                       gate):
        async with coord.phase("services"):
            sockets, tasks = knock(gate, 3)
            done, _ = await asyncio.wait(tasks, timeout=5, return_when=asyncio.FIRST_COMPLETED)
            (refused,) = [s for s, t in zip(sockets, tasks, strict=True) if t in done]
            assert refused.status == 503
            assert int(dict(refused.sent[0]["headers"])[b"retry-after"]) >= 1
            assert gate.state.rejected[Reason.FLEET_CAP] == 1
            # Three slots were granted, two handshakes held: a slot whose lease the fleet
            # refused was never a hold.
            assert gate.state.queue.status()["held_total"] == 2
            assert len(await members(client, namespace)) == 2
            assert record_of(coord)["held_leases"] == "2"
            assert record_of(coord)["fleet_cap_mode"] == "fleet"
        # ready: both held connections admitted, their leases gone
        held = [(s, t) for s, t in zip(sockets, tasks, strict=True) if s is not refused]
        await admitted_then_leave([s for s, _ in held], [t for _, t in held])
        await async_wait_until(lambda: equals(members(client, namespace), set()), 5,
                               what="the leases released")
        assert record_of(coord)["held_leases"] == "0"


async def test_gate_releases_the_lease_when_the_client_gives_up_or_the_handler_is_cancelled(
        redis_server: RedisServer, client: redis.Redis, namespace: str) -> None:
    async with gated(redis_server.url, namespace, fleet_max_queue=5) as (coord, gate), \
            coord.phase("services"):
        (quitter, _), (t1, t2) = knock(gate, 2)
        await async_wait_until(lambda: equals(members(client, namespace), {"gated:1", "gated:2"}),
                               5, what="two leases")
        quitter.disconnect()
        await t1
        assert gate.state.rejected[Reason.GAVE_UP] == 1
        t2.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t2
        await async_wait_until(lambda: equals(members(client, namespace), set()), 5,
                               what="both leases released")
        assert len(gate.state.queue) == 0
        assert gate.state.leases.held == set()


async def test_gate_rejects_held_connections_at_timeout_and_frees_their_leases(
        redis_server: RedisServer, client: redis.Redis, namespace: str) -> None:
    async with gated(redis_server.url, namespace, fleet_max_queue=5,
                     max_queue_time=0.3) as (coord, gate), coord.phase("services"):
        (s,), (task,) = knock(gate, 1)
        await task  # returns once the hold timed out
        assert s.status == 503
        assert gate.state.rejected[Reason.TIMEOUT] == 1
        await async_wait_until(lambda: equals(members(client, namespace), set()), 5,
                               what="the lease released")


async def test_gate_with_redis_down_holds_under_the_local_cap_and_reports_local_mode(
        namespace: str) -> None:
    async with gated("redis://127.0.0.1:1/0", namespace, fleet_max_queue=1,
                     max_queue=3) as (coord, gate):
        assert not coord.redis_ok  # Redis is unreachable: start went on
        async with coord.phase("services"):
            sockets, tasks = knock(gate, 4)
            await async_wait_until(lambda: sockets[3].status == 503, 5, what="the 4th rejected")
            assert len(gate.state.queue) == 3  # the local cap, not the fleet cap of 1
            assert gate.state.rejected[Reason.QUEUE_FULL] == 1
            assert record_of(coord)["fleet_cap_mode"] == "local"
        await admitted_then_leave(sockets[:3], tasks[:3])


async def test_clean_stop_removes_the_leases_of_connections_still_held(
        redis_server: RedisServer, client: redis.Redis, namespace: str) -> None:
    async with gated(redis_server.url, namespace, fleet_max_queue=5) as (coord, gate):
        startup = asyncio.create_task(run_phase_forever(coord, "services"))
        await async_wait_until(lambda: coord.current_phase == "services", 5)
        sockets, tasks = knock(gate, 2)
        await async_wait_until(lambda: len(gate.state.leases.held) == 2, 5, what="two leases")
        await coord.stop()
        assert await members(client, namespace) == set()  # gone by the time stop() returns
        startup.cancel()
        await asyncio.gather(*tasks)
        assert [s.status for s in sockets] == [503, 503]
        assert gate.state.rejected[Reason.DRAINING] == 2


async def run_phase_forever(coord: Coordinator, name: str) -> None:
    async with coord.phase(name):
        await asyncio.Event().wait()


async def test_processes_sharing_an_instance_id_keep_their_leases_apart(
        client: redis.Redis, namespace: str) -> None:
    # An owner and a follower (or two uvicorn workers) gate for one instance id and
    # number their holds from 1 each: their leases must still count and free apart.
    owner = leases_for(client, namespace, "shared", cap=2)
    follower = leases_for(client, namespace, "shared", cap=2)
    assert await owner.acquire(1, 5) == LEASED
    assert await follower.acquire(1, 5) == LEASED
    assert await leases_for(client, namespace, "other", cap=2).acquire(1, 5) == REFUSED
    owner.release(1)
    await async_wait_until(lambda: equals(client.zcard(Keys(namespace).leases), 1), 5,
                           what="the owner's lease to be released")
    raw = {as_text(m) for m in await client.zrange(Keys(namespace).leases, 0, -1)}
    assert raw == follower.held  # the follower's lease survived the owner's release
    await owner.close()
    await follower.close()


async def test_leases_no_instance_could_have_written_are_dropped_by_the_acquire(
        client: redis.Redis, namespace: str) -> None:
    """A writer without the key fills the fleet cap with leases that never expire: scores
    of 1e12, inf, or just past the longest hold any instance may have (LONGEST_HOLD). The
    next acquire drops them; a real lease of another instance (expiring within its hold
    plus the margin) stays."""
    key = Keys(namespace).leases
    now = float((await client.time())[0])
    longest = LONGEST_HOLD + 2.0  # the fleet's longest hold + the margin below
    await client.zadd(key, {"forged:1": 1e12, "forged:2": float("inf"),
                            "forged:3": now + longest + 5, "forged:4": float("-inf"),
                            "other:p.1": now + longest - 1})
    leases = leases_for(client, namespace, "a", cap=2, max_hold=10.0, margin=2.0)
    assert await leases.acquire(1, 10.0) == LEASED
    assert {as_text(m) for m in await client.zrange(key, 0, -1)} == {
        "other:p.1", next(iter(leases.held))}
    assert await leases.acquire(2, 10.0) == REFUSED  # the cap still counts real leases
    # A hold can never ask for more than its own longest lease either.
    assert await leases.acquire(1, 1e9) == LEASED
    # Bounded by the server's clock after the acquire, not by a time read before it: a
    # loaded machine took over a second between the two (CI, on the Cluster).
    after = await server_time(client)
    assert (await client.zscore(key, next(iter(leases.held))) or 0) <= after + 10.0 + 2.0
    await leases.close()


async def test_at_the_cap_only_leases_of_live_instances_count(
        client: redis.Redis, namespace: str) -> None:
    """Leases forged under ids no live instance has (re-added every 30 s with an expiry a
    little ahead, they made the cap refuse everyone, key or not) are removed when they
    would refuse; a live instance's leases still count."""
    keys = Keys(namespace)
    now = await server_time(client)
    await client.zadd(keys.instances, {"live": now})  # heartbeated just now
    await client.zadd(keys.leases, {f"ghost-{n}:p.{n}": now + 25 for n in range(5)})
    await client.zadd(keys.leases, {"live:p.1": now + 25})
    leases = leases_for(client, namespace, "a", cap=2, liveness=10.0)
    assert await leases.acquire(1, 5) == LEASED  # the ghosts gave way; "live" counts
    assert await members(client, namespace) == {"live:1", "a:1"}
    assert await leases.acquire(2, 5) == REFUSED  # the cap holds for the living
    await leases.close()


async def test_an_instance_with_a_short_hold_keeps_the_leases_of_one_with_a_long_hold(
        client: redis.Redis, namespace: str) -> None:
    """The bound past which a lease is impossible is the fleet's (LONGEST_HOLD), not the
    caller's own COORD_MAX_QUEUE_TIME: an instance holding 8 s once purged the valid
    leases of one holding 30 s, and the cap let 8 hold under a cap of 4."""
    long_hold = leases_for(client, namespace, "long", cap=4, max_hold=30.0)
    short_hold = leases_for(client, namespace, "short", cap=4, max_hold=8.0)
    assert [await long_hold.acquire(n, 30.0) for n in (1, 2)] == [LEASED, LEASED]
    assert [await short_hold.acquire(n, 8.0) for n in (1, 2, 3)] == [LEASED, LEASED, REFUSED]
    assert await members(client, namespace) == {"long:1", "long:2", "short:1", "short:2"}
    await long_hold.close()
    await short_hold.close()
