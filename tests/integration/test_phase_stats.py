"""Startup learned by the fleet: one instance's completed startup, folded into
N:phase_stats, lets the next instance hold a connection that arrives in an earlier phase
(and publish when it expects to be ready)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from coordinator import ConnectionGate, Coordinator, Settings
from coordinator._redis.client import make_redis
from coordinator.contract.keys import Keys
from coordinator.contract.outcomes import Admitted
from coordinator.contract.rejection import Reason
from tests.support import (
    DENIAL,
    FakeWebSocket,
    RedisServer,
    async_wait_until,
    echo_app,
    handshake,
    record_of,
)

pytestmark = pytest.mark.redis

PHASES = ("init", "database", "cache", "services")  # init and database are "earlier"
DURATIONS = {"init": 0.05, "database": 0.1, "cache": 0.05, "services": 0.2}


def coordinator(url: str, namespace: str, name: str) -> Coordinator:
    return Coordinator(Settings(redis_url=url, namespace=namespace, instance_id=name,
                                phases=PHASES, ready_phase="services", environment="test"))


async def run_startup(coord: Coordinator, until: str | None = None) -> None:
    """Run the phases with DURATIONS; stop inside ``until`` (it is left open)."""
    for name in PHASES:
        if name == until:
            return
        async with coord.phase(name):
            await asyncio.sleep(DURATIONS[name])


async def stats(url: str, namespace: str) -> dict[str, float]:
    client: Any = make_redis(url, namespace=namespace, decode_responses=True)
    try:
        return {k: float(v) for k, v in (await client.hgetall(Keys(namespace).phase_stats)).items()}
    finally:
        await client.aclose()


async def test_an_early_connection_is_rejected_until_the_fleet_has_learned_its_startup(
        redis_server: RedisServer, namespace: str) -> None:
    url = redis_server.url
    first = coordinator(url, namespace, "first")
    gate = ConnectionGate(echo_app, first)
    await first.start()
    async with first.phase("init"):  # nothing learned yet: no estimate, no hold
        early = FakeWebSocket(DENIAL)
        await gate(early.scope, early.receive, early.send)
        assert early.status == 503
        assert json.loads(early.sent[1]["body"])["reason"] == "starting"
        assert record_of(first)["expected_ready_at"] == ""
    await run_startup(first)
    await async_wait_until(lambda: _has_all(stats(url, namespace)), 5,
                           what="the first startup folded into N:phase_stats")
    await first.stop()

    second = coordinator(url, namespace, "second")
    gate = ConnectionGate(echo_app, second)
    await second.start()
    assert set(second.phase_stats) == set(PHASES)
    async with second.phase("init"):
        record = record_of(second)
        # Ready expected when the phases still to come have taken their fleet averages,
        # counted from the start of this one.
        expected_at = float(record["phase_started_at"]) + sum(second.phase_stats.values())
        assert float(record["expected_ready_at"]) == pytest.approx(expected_at, abs=1e-3)
        early = FakeWebSocket(DENIAL)
        held = handshake(gate, early)
        await async_wait_until(lambda: len(gate.state.queue) == 1, 5, what="the early one held")
    startup = asyncio.create_task(run_startup(second))
    await async_wait_until(lambda: early.sent, 5, what="the answer")
    assert early.sent[0]["type"] == "websocket.accept"  # released when ready, not rejected
    assert gate.state.admitted[Admitted.AFTER_HOLD] == 1
    early.disconnect()
    await asyncio.gather(held, startup)
    await second.stop()


async def test_an_early_connection_is_rejected_when_the_fleet_expects_a_long_startup(
        redis_server: RedisServer, namespace: str) -> None:
    client: Any = make_redis(redis_server.url, namespace=namespace)
    await client.hset(f"{{{namespace}}}:phase_stats",
                      mapping={"init": "0.1", "database": "0.1", "cache": "0.1",
                               "services": "7.5"})
    await client.aclose()
    coord = coordinator(redis_server.url, namespace, "slow")
    gate = ConnectionGate(echo_app, coord)
    await coord.start()
    async with coord.phase("init"):
        early = FakeWebSocket(DENIAL)
        await gate(early.scope, early.receive, early.send)
        body = json.loads(early.sent[1]["body"])
        assert body["reason"] == "starting"
        # The estimate, rounded up (come back when ready), plus a spread of its own.
        assert 8 <= body["retry_after"] <= 12
        assert gate.state.rejected[Reason.STARTING] == 1
    await coord.stop()


async def _has_all(pending: Any) -> bool:
    return set(await pending) == set(PHASES)


async def test_a_field_name_that_is_not_utf8_in_the_stats_does_not_keep_the_link_down(
        redis_server: RedisServer, namespace: str) -> None:
    client = make_redis(redis_server.url, namespace=namespace)
    try:
        await client.hset(Keys(namespace).phase_stats, mapping={b"\xfe": b"1", b"services": b"4"})
        coord = coordinator(redis_server.url, namespace, "odd-stats")
        await coord.start()
        try:
            await async_wait_until(lambda: coord.redis_ok, 10, what="the Redis link up")
            # Only the plan's phases are read (HMGET): a field no phase has is never seen.
            assert coord.phase_stats == {"services": 4.0}
            assert await client.zscore(f"{{{namespace}}}:instances", "odd-stats") is not None
        finally:
            await coord.stop()
    finally:
        await client.aclose()


async def test_the_fleet_learns_the_startup_when_the_ready_phase_completes_not_at_the_last(
        redis_server: RedisServer, namespace: str) -> None:
    """A service whose later phases take long (or never end) still teaches the fleet
    what an estimate of "ready" needs; the later phases are folded when they complete."""
    url = redis_server.url
    coord = Coordinator(Settings(redis_url=url, namespace=namespace, instance_id="slow-tail",
                                 phases=("init", "services", "warmup"), ready_phase="services",
                                 environment="test"))
    await coord.start()
    finish = asyncio.Event()

    async def startup() -> None:
        for name in ("init", "services", "warmup"):
            async with coord.phase(name):
                if name == "warmup":
                    await finish.wait()

    task = asyncio.create_task(startup())
    try:
        await async_wait_until(lambda: _has(stats(url, namespace), {"init", "services"}), 5,
                               what="init and services folded at ready")
        assert coord.current_phase == "warmup"
        assert "warmup" not in await stats(url, namespace)
        finish.set()
        await task
        await async_wait_until(lambda: _has(stats(url, namespace), {"init", "services", "warmup"}),
                               5, what="warmup folded at the last phase")
    finally:
        task.cancel()
        await coord.stop()


async def _has(pending: Any, phases: set[str]) -> bool:
    return set(await pending) == phases
