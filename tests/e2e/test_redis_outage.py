"""Redis down at start, Redis killed mid-startup: the instance still gates, becomes ready
and releases its held clients from local state, then re-publishes when Redis returns."""

from __future__ import annotations

import contextlib

import pytest
import redis

from tests.support import (
    CHAT,
    NEAR_READY_DURATIONS,
    RedisServer,
    assert_chatted,
    backend_env,
    counters,
    free_port,
    health,
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
            record = client.hgetall(f"{namespace}:instance:{instance}")
            indexed = client.zscore(f"{namespace}:instances", instance) is not None
        except redis.ConnectionError:
            return {}
    return record if indexed else {}


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


async def test_redis_killed_mid_startup(start_backend, own_redis, namespace):
    env = backend_env(namespace=namespace, redis_url=own_redis.url,
                      BACKEND_PHASE_DURATIONS=f"{NEAR_READY_DURATIONS},services=5")
    backend = start_backend(env, wait=True)
    instance = env["COORD_INSTANCE_ID"]
    wait_for_phase(backend, ("services",))
    wait_until(lambda: instance_record(own_redis, namespace, instance).get("phase") == "services",
               5, what="the instance hash in services")

    own_redis.kill()
    await serve_held_clients_without_redis(backend, instance)

    own_redis.start()  # same port, empty: only a re-publish can bring the hash back
    wait_republished(own_redis, namespace, instance)
    wait_until(lambda: health(backend)[1]["redis"] == "ok", 5, what="/health/ready redis ok")

