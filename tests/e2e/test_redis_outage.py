"""Redis down at start, Redis killed mid-startup, Redis frozen (SIGSTOP) mid-startup: the
instance still gates, becomes ready and releases its held clients from local state, then
re-publishes when Redis returns."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import redis

from coordinator.contract.record import as_text
from tests.support import (
    CHAT,
    NEAR_READY_DURATIONS,
    BackendProcess,
    RedisServer,
    assert_chatted,
    async_wait_until,
    backend_env,
    chat,
    counters,
    free_port,
    get,
    health,
    metric,
    parse_metrics,
    storm,
    tally,
    wait_for_phase,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

HELD = 20
REPUBLISH_DEADLINE = 20  # reconnect backoff is capped at 5 s (plus jitter)


def instance_record(server: RedisServer, namespace: str, instance: str) -> dict[str, str]:
    with contextlib.closing(redis.Redis.from_url(server.url, decode_responses=True)) as client:
        try:
            record = client.hgetall(f"{{{namespace}}}:instance:{instance}")
            indexed = client.zscore(f"{{{namespace}}}:instances", instance) is not None
        except redis.ConnectionError:
            return {}
    return {as_text(k): as_text(v) for k, v in record.items()} if indexed else {}


async def serve_held_clients_without_redis(backend, instance: str) -> None:
    outcomes = await storm(backend.ws_url, HELD)
    assert tally(outcomes) == {CHAT: HELD}
    for outcome in outcomes:
        assert_chatted(outcome, instance)
    status, body = health(backend)
    assert status == 200 and body["state"] == "ready" and body["redis"] == "down", body
    assert counters(body) == {"admitted": {"after_hold": HELD}, "rejected": {},
                              "held_total": HELD, "released_total": HELD, "depth": 0}


def wait_republished(server: RedisServer, namespace: str, instance: str) -> dict[str, str]:
    return wait_until(
        lambda: (r := instance_record(server, namespace, instance)).get("state") == "ready"
        and r, REPUBLISH_DEADLINE, interval=0.1, what="the instance hash to reappear")


async def test_redis_down_at_start(start_backend, namespace):
    later = RedisServer(port=free_port())  # nothing listens there yet
    env = backend_env(namespace=namespace, redis_url=later.url,
                      BACKEND_PHASE_DURATIONS=f"{NEAR_READY_DURATIONS},services=4")
    backend = start_backend(env, wait=True)
    try:
        wait_for_phase(backend, ("cache", "services"))
        assert health(backend)[1]["redis"] == "down"

        await serve_held_clients_without_redis(backend, env["COORD_INSTANCE_ID"])

        later.start()
        record = wait_republished(later, namespace, env["COORD_INSTANCE_ID"])
    finally:
        later.kill()
    assert record["id"] == env["COORD_INSTANCE_ID"] and record["phase_index"], record


def in_services(start_backend, redis: RedisServer, namespace: str, services: float,
                **extra: str) -> tuple[BackendProcess, str]:
    """A backend in its `services` phase (of ``services`` seconds), its hash saying so."""
    env = backend_env(namespace=namespace, redis_url=redis.url,
                      BACKEND_PHASE_DURATIONS=f"{NEAR_READY_DURATIONS},services={services}",
                      **extra)
    backend = start_backend(env, wait=True)
    instance = env["COORD_INSTANCE_ID"]
    wait_for_phase(backend, ("services",))
    wait_until(lambda: instance_record(redis, namespace, instance).get("phase") == "services",
               5, what="the instance hash in services")
    return backend, instance


async def test_redis_killed_mid_startup(start_backend, own_redis, namespace):
    backend, instance = in_services(start_backend, own_redis, namespace, services=5)

    own_redis.kill()
    await serve_held_clients_without_redis(backend, instance)

    own_redis.start()  # same port, empty: only a re-publish can bring the hash back
    wait_republished(own_redis, namespace, instance)
    wait_until(lambda: health(backend)[1]["redis"] == "ok", 5, what="/health/ready redis ok")


async def test_redis_frozen_mid_startup_with_a_fleet_cap(start_backend, own_redis, namespace):
    """A Redis that hangs (SIGSTOP: connections stay open, nothing is answered) rather than
    one that refuses. Each lease acquire waits out its 1 s timeout and falls back to the
    local cap; the gate keeps answering and holds more clients than the fleet cap of 2
    allows; ready releases them all from local state; and once Redis resumes the instance
    re-publishes itself. (The fleet cap itself comes back with the next successful
    acquire: tests/integration/test_redis_hang.py.)"""
    clients, fleet_cap = 5, 2
    backend, instance = in_services(start_backend, own_redis, namespace, services=6,
                                    COORD_FLEET_MAX_QUEUE=str(fleet_cap))
    assert health(backend)[1]["fleet_cap"]["mode"] == "fleet"

    own_redis.freeze()
    try:
        held = [asyncio.create_task(chat(backend.ws_url, f"client {i}", open_timeout=30))
                for i in range(clients)]

        async def held_locally() -> bool:
            # /health/ready is served from memory: it answers at once (get()'s 2 s
            # timeout would fail this wait otherwise) while every Redis call hangs.
            status, body = await get(backend, "/health/ready")
            assert status and body["state"] == "starting", (status, body)
            return bool(body["queue"]["depth"] == clients
                        and body["fleet_cap"]["mode"] == "local")

        await async_wait_until(held_locally, 10,
                               what=f"{clients} held under the local cap, the cap said local")
        outcomes = await asyncio.gather(*held)
        for outcome in outcomes:
            assert_chatted(outcome, instance)
        await async_wait_until(lambda: _redis_is(backend, "down"), 10,
                               what="the link to notice the hang")
        status, body = health(backend)
        assert (status, body["state"]) == (200, "ready"), body
        assert counters(body)["admitted"] == {"after_hold": clients}, body
        metrics = parse_metrics((await get(backend, "/metrics"))[1])
        assert metric(metrics, "coordinator_fleet_lease_requests_total",
                      outcome="local") == clients
        assert metric(metrics, "coordinator_fleet_lease_requests_total", outcome="leased") == 0
    finally:
        own_redis.thaw()

    record = wait_republished(own_redis, namespace, instance)
    assert record["redis"] == "ok", record
    wait_until(lambda: health(backend)[1]["redis"] == "ok", 10, what="/health/ready redis ok")


async def _redis_is(backend, state: str) -> bool:
    return bool((await get(backend, "/health/ready"))[1]["redis"] == state)
