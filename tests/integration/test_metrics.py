"""/metrics as Prometheus reads it, after real traffic through the gate on a real Redis."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis.asyncio as redis

from coordinator import ConnectionGate, Coordinator, Settings
from coordinator._redis.client import make_redis
from coordinator.contract.outcomes import Admitted
from coordinator.ops.metrics import Metrics
from tests.support import (
    DENIAL,
    FakeWebSocket,
    RedisServer,
    Samples,
    async_wait_until,
    echo_app,
    handshake,
    metric,
    parse_metrics,
    publish,
)

pytestmark = pytest.mark.redis


def samples(metrics: Metrics) -> Samples:
    return parse_metrics(metrics.render())


async def test_metrics_count_holds_rejections_leases_phases_drops_and_redis_errors(
        own_redis: RedisServer, namespace: str) -> None:
    coord = Coordinator(Settings(redis_url=own_redis.url, namespace=namespace,
                                 instance_id="metered", phases=("init", "services"),
                                 ready_phase="services", fleet_max_queue=1,
                                 heartbeat_interval=0.2, instance_ttl=2.0))
    gate = ConnectionGate(echo_app, coord)
    metrics = Metrics(coord, gate)
    await coord.start()
    async with coord.phase("init"):
        pass
    async with coord.phase("services"):
        held, refused = FakeWebSocket(DENIAL), FakeWebSocket(DENIAL)
        held_task = handshake(gate, held)
        await async_wait_until(lambda: len(gate.state.leases.held) == 1, 5, what="a lease")
        await gate(refused.scope, refused.receive, refused.send)
        assert refused.status == 503
        during = samples(metrics)
        publisher = redis.Redis.from_url(own_redis.url)
        await publish(publisher, f"{{{namespace}}}:instance:metered:events", b"not json")
        await publisher.aclose()
        await async_wait_until(lambda: coord.drops.total == 1, 5, what="the drop")
    await async_wait_until(lambda: gate.state.admitted[Admitted.AFTER_HOLD] == 1, 5,
                           what="released")

    assert metric(during, "coordinator_held") == 1
    assert metric(during, "coordinator_fleet_leases_held") == 1
    assert metric(during, "coordinator_fleet_cap") == 1
    assert metric(during, "coordinator_fleet_cap_mode", mode="fleet") == 1
    assert metric(during, "coordinator_state", state="starting") == 1

    after = samples(metrics)
    assert metric(after, "coordinator_held") == 0
    assert metric(after, "coordinator_fleet_leases_held") == 0
    assert metric(after, "coordinator_admitted_total", how="after_hold") == 1
    assert metric(after, "coordinator_rejected_total", reason="fleet_cap") == 1
    assert metric(after, "coordinator_fleet_lease_requests_total", outcome="leased") == 1
    assert metric(after, "coordinator_fleet_lease_requests_total", outcome="refused") == 1
    assert metric(after, "coordinator_hold_seconds_count", outcome="released") == 1
    assert metric(after, "coordinator_dropped_messages_total", reason="invalid_json") == 1
    assert metric(after, "coordinator_phase_duration_seconds", phase="services") > 0
    assert metric(after, "coordinator_state", state="ready") == 1
    assert metric(after, "coordinator_redis_up") == 1

    own_redis.kill()
    await async_wait_until(lambda: not coord.redis_ok, 10, what="the link to notice")
    down = samples(metrics)
    assert metric(down, "coordinator_redis_up") == 0
    assert metric(down, "coordinator_redis_errors_total", source="link") >= 1

    held.disconnect()
    await held_task
    await coord.stop()


async def test_expected_ready_seconds_is_exported_while_starting(
        redis_server: RedisServer, namespace: str) -> None:
    client: Any = make_redis(redis_server.url, namespace=namespace)
    await client.hset(f"{{{namespace}}}:phase_stats", mapping={"init": "1", "services": "4"})
    await client.aclose()
    coord = Coordinator(Settings(redis_url=redis_server.url, namespace=namespace,
                                 phases=("init", "services"), ready_phase="services"))
    metrics = Metrics(coord)
    await coord.start()
    async with coord.phase("init"):
        started = coord.status.phase_started_at
        assert started is not None
        before = time.time()
        eta = metric(samples(metrics), "coordinator_expected_ready_seconds")
        after = time.time()
        # init's and services' averages (1 + 4 s) less the time spent in init so far,
        # as of the moment the page was rendered (between the two clock reads).
        assert 5 - (after - started) <= eta <= 5 - (before - started), (eta, started)
    await coord.stop()
