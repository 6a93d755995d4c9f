"""The fleet-wide cap (COORD_FLEET_MAX_QUEUE) across real backend processes on one Redis:
never exceeded under a storm, and a SIGKILLed holder's leases expire and free capacity."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis
from prometheus_client.parser import text_string_to_metric_families

from tests.support import BackendProcess, RedisServer, async_wait_until, free_port

from tests.support import (
    CHAT,
    NEAR_READY_DURATIONS,
    Outcome,
    assert_chatted,
    assert_clean_rejection,
    chat,
    tally,
)
from .test_fleet import get, reach_services, start_all

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

FLEET_CAP = 6
LOCAL_CAP = 5  # three instances: 15 local slots, more than the fleet allows
CLIENTS_EACH = 12


def env(redis_url: str, namespace: str, instance: str, **extra: str) -> dict[str, str]:
    return {"COORD_REDIS_URL": redis_url, "COORD_NAMESPACE": namespace,
            "COORD_INSTANCE_ID": instance, "COORD_FLEET_MAX_QUEUE": str(FLEET_CAP),
            "COORD_MAX_QUEUE": str(LOCAL_CAP), **extra}


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[redis.Redis]:
    c = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield c
    await c.aclose()


async def metric_values(backend: BackendProcess) -> dict[tuple[str, str], float]:
    """Samples from /metrics by (name, the value of the label that is not ``instance``)."""
    status, text = await get(backend, "/metrics")
    assert status == 200
    body = text.decode() if isinstance(text, bytes) else str(text)
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            rest = [v for k, v in s.labels.items() if k != "instance"]
            out[(s.name, rest[0] if rest else "")] = s.value
    return out


class LeaseSampler:
    """ZCARD N:leases as often as Redis answers, for as long as the traffic lasts."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.key = f"{namespace}:leases"
        self.samples: list[int] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(await self.client.zcard(self.key))
            await asyncio.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()


async def test_the_fleet_cap_is_never_exceeded_by_a_storm_across_three_instances(
        redis_server: RedisServer, namespace: str, start_backend: Any,
        client: redis.Redis) -> None:
    names = [f"{namespace}-{n}" for n in "abc"]
    backends = await start_all(start_backend, [
        env(redis_server.url, namespace, name,
            BACKEND_PHASE_DURATIONS=f"{NEAR_READY_DURATIONS},services=4") for name in names])
    await asyncio.gather(*(reach_services(b) for b in backends))

    sampler = LeaseSampler(client, namespace)
    sampling = asyncio.create_task(sampler.run())
    storms = [[chat(b.ws_url, f"{name} {i}", open_timeout=30) for i in range(CLIENTS_EACH)]
              for b, name in zip(backends, names, strict=True)]
    results = await asyncio.gather(*(asyncio.gather(*s) for s in storms))
    sampler.stop()
    await sampling

    assert max(sampler.samples) == FLEET_CAP, sampler.samples  # reached, never exceeded
    everyone: list[Outcome] = [o for per in results for o in per]
    counts = tally(everyone)
    assert not any("1011" in k for k in counts), counts
    for name, outcomes in zip(names, results, strict=True):
        for outcome in outcomes:
            if outcome.kind == CHAT:
                assert_chatted(outcome, name)
            else:  # every other client: 503 + Retry-After, for a cap's reason
                assert outcome.rejection in ("fleet_cap", "queue_full"), counts
                assert_clean_rejection(outcome, "http", outcome.rejection)
    assert counts[CHAT] == FLEET_CAP, counts  # the held ones, released when ready
    assert sum(v for k, v in counts.items() if "fleet_cap" in k) > 0, counts

    await async_wait_until(lambda: _eq(client.zcard(f"{namespace}:leases"), 0), 10,
                           what="every lease released")
    await asyncio.gather(*(asyncio.to_thread(b.wait_ready) for b in backends))
    per_backend = [await metric_values(b) for b in backends]
    # Every hold had a lease (none fell back to the local cap), so held <= leases <= cap.
    assert sum(m[("coordinator_fleet_lease_requests_total", "leased")]
               for m in per_backend) == FLEET_CAP
    assert all(m[("coordinator_fleet_lease_requests_total", "local")] == 0
               for m in per_backend)
    assert sum(m[("coordinator_admitted_total", "after_hold")]
               for m in per_backend) == FLEET_CAP
    assert sum(m.get(("coordinator_rejected_total", "fleet_cap"), 0)
               for m in per_backend) == sum(v for k, v in counts.items() if "fleet_cap" in k)
    for m in per_backend:
        assert m[("coordinator_fleet_leases_held", "")] == 0
        assert m[("coordinator_fleet_cap", "")] == FLEET_CAP
        assert m[("coordinator_fleet_cap_mode", "fleet")] == 1
        assert m[("coordinator_phase_duration_seconds", "services")] > 3.5  # ~ services=4
        assert ("coordinator_hold_seconds_count", "released") in m or \
            m[("coordinator_admitted_total", "after_hold")] == 0
        assert ("coordinator_redis_errors_total", "leases") in m
        assert ("coordinator_dropped_messages_total", "") not in m  # none dropped here


async def test_a_sigkilled_instances_leases_expire_and_its_capacity_is_used_by_others(
        redis_server: RedisServer, namespace: str, start_backend: Any,
        client: redis.Redis) -> None:
    cap = 3
    # Lease TTL = hold deadline (COORD_MAX_QUEUE_TIME) + a 2 s margin.
    extra = {"COORD_FLEET_MAX_QUEUE": str(cap), "COORD_MAX_QUEUE_TIME": "4",
             "BACKEND_PHASE_DURATIONS": f"{NEAR_READY_DURATIONS},services=60"}
    victim, survivor = await start_all(start_backend, [
        env(redis_server.url, namespace, f"{namespace}-victim", **extra),
        env(redis_server.url, namespace, f"{namespace}-survivor", **extra)])
    await asyncio.gather(reach_services(victim), reach_services(survivor))
    key = f"{namespace}:leases"

    async def holders() -> list[str]:
        return sorted(m.rsplit(":", 1)[0] for m in await client.zrange(key, 0, -1))

    held = [asyncio.create_task(chat(victim.ws_url, open_timeout=30)) for _ in range(cap)]
    await async_wait_until(lambda: _eq(holders(), [f"{namespace}-victim"] * cap), 10,
                           what="the victim holding every lease")
    turned_away = await chat(survivor.ws_url)
    assert_clean_rejection(turned_away, "http", "fleet_cap")

    victim.kill()  # SIGKILL: no clean stop, its leases stay behind
    assert await holders() == [f"{namespace}-victim"] * cap
    for task in held:
        assert (await task).kind != CHAT

    async def expired() -> bool:
        seconds, micros = await client.time()
        return await client.zcount(key, f"({seconds + micros / 1e6}", "+inf") == 0

    await async_wait_until(expired, 10, what="the victim's leases to expire (server clock)")
    newcomers = [asyncio.create_task(chat(survivor.ws_url, open_timeout=30))
                 for _ in range(cap)]
    # The survivor's acquires purge the expired leases and take every slot.
    await async_wait_until(lambda: _eq(holders(), [f"{namespace}-survivor"] * cap), 10,
                           what="the survivor holding the freed capacity")
    for task in newcomers:
        task.cancel()
    await asyncio.gather(*newcomers, return_exceptions=True)


async def _eq(value: Any, expected: Any) -> bool:
    return await value == expected


async def test_with_redis_down_the_local_cap_holds_and_the_status_says_so(
        namespace: str, start_backend: Any) -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    backend = start_backend(env(unreachable, namespace, f"{namespace}-alone",
                                COORD_FLEET_MAX_QUEUE="1", COORD_MAX_QUEUE="3",
                                BACKEND_PHASE_DURATIONS=f"{NEAR_READY_DURATIONS},services=3"))
    await reach_services(backend)
    outcomes = await asyncio.gather(*(chat(backend.ws_url, open_timeout=30) for _ in range(4)))
    counts = tally(outcomes)
    assert counts == {CHAT: 3, "http 503 queue_full": 1}, counts  # 3 held, not 1
    body = (await get(backend, "/health/ready"))[1]
    assert body["redis"] == "down"
    assert body["fleet_cap"] == {"cap": 1, "mode": "local", "held_leases": 0}
    metrics = await metric_values(backend)
    assert metrics[("coordinator_fleet_cap_mode", "local")] == 1
    assert metrics[("coordinator_fleet_lease_requests_total", "local")] == 3
