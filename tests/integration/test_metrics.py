"""/metrics as Prometheus reads it, after real traffic through the gate on a real Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as redis
from prometheus_client.parser import text_string_to_metric_families

from coordinator import ConnectionGate, Coordinator, Settings
from coordinator.metrics import Metrics
from tests.integration.test_leases import FakeSocket, echo_app
from tests.support import RedisServer, async_wait_until

pytestmark = pytest.mark.redis


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample by (name, labels without ``instance``)."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            labels = frozenset((k, v) for k, v in s.labels.items() if k != "instance")
            out[(s.name, labels)] = s.value
    return out


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


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
        held, refused = FakeSocket(), FakeSocket()
        held_task = asyncio.create_task(gate(held.scope, held.receive, held.send))
        await async_wait_until(lambda: len(gate.state.leases.held) == 1, 5, what="a lease")
        await gate(refused.scope, refused.receive, refused.send)
        assert refused.status == 503
        during = samples(metrics)
        publisher = redis.Redis.from_url(own_redis.url)
        await publisher.publish(f"{namespace}:instance:metered:events", b"not json")
        await publisher.aclose()
        await async_wait_until(lambda: coord.drops.total == 1, 5, what="the drop")
    await async_wait_until(lambda: gate.state.admitted["after_hold"] == 1, 5, what="released")

    assert value(during, "coordinator_held") == 1
    assert value(during, "coordinator_fleet_leases_held") == 1
    assert value(during, "coordinator_fleet_cap") == 1
    assert value(during, "coordinator_fleet_cap_mode", mode="fleet") == 1
    assert value(during, "coordinator_state", state="starting") == 1

    after = samples(metrics)
    assert value(after, "coordinator_held") == 0
    assert value(after, "coordinator_fleet_leases_held") == 0
    assert value(after, "coordinator_admitted_total", how="after_hold") == 1
    assert value(after, "coordinator_rejected_total", reason="fleet_cap") == 1
    assert value(after, "coordinator_fleet_lease_requests_total", outcome="leased") == 1
    assert value(after, "coordinator_fleet_lease_requests_total", outcome="refused") == 1
    assert value(after, "coordinator_hold_seconds_count", outcome="released") == 1
    assert value(after, "coordinator_dropped_messages_total", reason="invalid_json") == 1
    assert value(after, "coordinator_phase_duration_seconds", phase="services") > 0
    assert value(after, "coordinator_state", state="ready") == 1
    assert value(after, "coordinator_redis_up") == 1

    own_redis.kill()
    await async_wait_until(lambda: not coord.redis_ok, 10, what="the link to notice")
    down = samples(metrics)
    assert value(down, "coordinator_redis_up") == 0
    assert value(down, "coordinator_redis_errors_total", source="link") >= 1

    held.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
    await held_task
    await coord.stop()


async def test_expected_ready_seconds_is_exported_while_starting(
        redis_server: RedisServer, namespace: str) -> None:
    client: Any = redis.Redis.from_url(redis_server.url)
    await client.hset(f"{namespace}:phase_stats", mapping={"init": "1", "services": "4"})
    await client.aclose()
    coord = Coordinator(Settings(redis_url=redis_server.url, namespace=namespace,
                                 phases=("init", "services"), ready_phase="services"))
    metrics = Metrics(coord)
    await coord.start()
    async with coord.phase("init"):
        eta = value(samples(metrics), "coordinator_expected_ready_seconds")
        assert 4 < eta <= 5
    await coord.stop()
