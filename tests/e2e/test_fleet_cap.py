"""The fleet-wide cap (COORD_FLEET_MAX_QUEUE) across real backend processes on one Redis:
never exceeded under a storm, and a SIGKILLed holder's leases expire and free capacity."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as redis

from coordinator.contract.record import as_text
from tests.support import (
    CHAT,
    DROPPED,
    NEAR_READY_DURATIONS,
    BackendProcess,
    Outcome,
    RedisServer,
    Samples,
    assert_chatted,
    assert_clean_rejection,
    async_wait_until,
    backend_env,
    chat,
    equals,
    free_port,
    get,
    metric,
    parse_metrics,
    reach_services,
    start_all,
    tally,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

FLEET_CAP = 6
LOCAL_CAP = 5  # three instances: 15 local slots, more than the fleet allows
CLIENTS_EACH = 12
LEASE_REQUESTS = "coordinator_fleet_lease_requests_total"


def env(redis_url: str, namespace: str, instance: str, **extra: str) -> dict[str, str]:
    return backend_env(redis_url=redis_url, namespace=namespace, instance=instance,
                       **{"COORD_FLEET_MAX_QUEUE": str(FLEET_CAP),
                          "COORD_MAX_QUEUE": str(LOCAL_CAP), **extra})


async def metrics_of(backend: BackendProcess) -> Samples:
    status, text = await get(backend, "/metrics")
    assert status == 200
    return parse_metrics(text if isinstance(text, bytes) else str(text))


class LeaseSampler:
    """ZCARD N:leases as often as Redis answers, for as long as the traffic lasts."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.key = f"{{{namespace}}}:leases"
        self.samples: list[int] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(await self.client.zcard(self.key))
            await asyncio.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()


@pytest.mark.matrix
async def test_the_fleet_cap_is_never_exceeded_by_a_storm_across_three_instances(
        redis_server: RedisServer, namespace: str, start_backend: Any,
        redis_text: redis.Redis) -> None:
    names = [f"{namespace}-{n}" for n in "abc"]
    backends = await start_all(start_backend, [
        env(redis_server.url, namespace, name,
            BACKEND_PHASE_DURATIONS=f"{NEAR_READY_DURATIONS},services=4") for name in names])
    await asyncio.gather(*(reach_services(b) for b in backends))

    sampler = LeaseSampler(redis_text, namespace)
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
    assert sum(v for k, v in counts.items() if "fleet_cap" in k) > 0, counts

    await async_wait_until(lambda: equals(redis_text.zcard(f"{{{namespace}}}:leases"), 0), 10,
                           what="every lease released")
    await asyncio.gather(*(asyncio.to_thread(b.wait_ready) for b in backends))
    per_backend = [await metrics_of(b) for b in backends]
    fleet_capped = sum(v for k, v in counts.items() if "fleet_cap" in k)
    leased = sum(metric(m, LEASE_REQUESTS, outcome="leased") for m in per_backend)
    # Every hold had a lease, except where an acquire took over its 1 s and fell back to
    # the local cap (docs/guide.md, "Fleet cap"; a storm on a loaded 2-core machine can cause
    # one), counted as `local` and as a lease error. The cap bounds the leases held at
    # once (the sampler above), not their total: on a loaded machine a handshake decided
    # just before one instance's ready can get a lease that ready just freed. And a
    # client that reaches an instance once it is ready is admitted at once, no lease.
    fell_back = sum(metric(m, LEASE_REQUESTS, outcome="local") for m in per_backend)
    held = sum(metric(m, "coordinator_admitted_total", how="after_hold") for m in per_backend)
    at_once = sum(m.get(("coordinator_admitted_total", frozenset({("how", "immediate")})), 0)
                  for m in per_backend)
    assert held == leased + fell_back >= FLEET_CAP, (held, leased, fell_back)
    assert counts[CHAT] == held + at_once, (counts, held, at_once)
    assert sum(m.get(("coordinator_rejected_total", frozenset({("reason", "fleet_cap")})), 0)
               for m in per_backend) == fleet_capped
    for m in per_backend:
        local = metric(m, LEASE_REQUESTS, outcome="local")
        assert metric(m, "coordinator_redis_errors_total", source="leases") == local
        if not local:
            assert metric(m, "coordinator_fleet_cap_mode", mode="fleet") == 1
        assert metric(m, "coordinator_fleet_leases_held") == 0
        assert metric(m, "coordinator_fleet_cap") == FLEET_CAP
        # The phase sleeps 4 s: never reported shorter (10 ms for the clock's granularity).
        assert metric(m, "coordinator_phase_duration_seconds", phase="services") >= 4.0 - 0.01
        # One hold-time observation per released hold (the series exists once observed).
        released = m.get(("coordinator_hold_seconds_count",
                          frozenset({("outcome", "released")})), 0)
        assert released == metric(m, "coordinator_admitted_total", how="after_hold")
        dropped = [v for (name, _), v in m.items() if name == "coordinator_dropped_messages_total"]
        assert not any(dropped), dropped  # no message was dropped here


async def test_a_sigkilled_instances_leases_expire_and_its_capacity_is_used_by_others(
        redis_server: RedisServer, namespace: str, start_backend: Any,
        redis_text: redis.Redis) -> None:
    cap = 3
    # Lease TTL = hold deadline (COORD_MAX_QUEUE_TIME) + a 2 s margin.
    extra = {"COORD_FLEET_MAX_QUEUE": str(cap), "COORD_MAX_QUEUE_TIME": "4",
             "BACKEND_PHASE_DURATIONS": f"{NEAR_READY_DURATIONS},services=60"}
    victim, survivor = await start_all(start_backend, [
        env(redis_server.url, namespace, f"{namespace}-victim", **extra),
        env(redis_server.url, namespace, f"{namespace}-survivor", **extra)])
    await asyncio.gather(reach_services(victim), reach_services(survivor))
    key = f"{{{namespace}}}:leases"

    async def holders() -> list[str]:
        return sorted(as_text(m).rsplit(":", 1)[0] for m in await redis_text.zrange(key, 0, -1))

    held = [asyncio.create_task(chat(victim.ws_url, open_timeout=30)) for _ in range(cap)]
    await async_wait_until(lambda: equals(holders(), [f"{namespace}-victim"] * cap), 10,
                           what="the victim holding every lease")
    turned_away = await chat(survivor.ws_url)
    assert_clean_rejection(turned_away, "http", "fleet_cap")

    victim.kill()  # SIGKILL: no clean stop, its leases stay behind
    assert await holders() == [f"{namespace}-victim"] * cap
    for task in held:  # the kernel closed their connections: no HTTP response at all
        outcome = await task
        assert outcome.kind == DROPPED, outcome

    async def expired() -> bool:
        seconds, micros = await redis_text.time()
        return await redis_text.zcount(key, f"({seconds + micros / 1e6}", "+inf") == 0

    await async_wait_until(expired, 10, what="the victim's leases to expire (server clock)")
    newcomers = [asyncio.create_task(chat(survivor.ws_url, open_timeout=30))
                 for _ in range(cap)]
    # The survivor's acquires purge the expired leases and take every slot.
    await async_wait_until(lambda: equals(holders(), [f"{namespace}-survivor"] * cap), 10,
                           what="the survivor holding the freed capacity")
    for task in newcomers:
        task.cancel()
    await asyncio.gather(*newcomers, return_exceptions=True)


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
    metrics = await metrics_of(backend)
    assert metric(metrics, "coordinator_fleet_cap_mode", mode="local") == 1
    assert metric(metrics, LEASE_REQUESTS, outcome="local") == 3
