"""Benchmark 3, startup storm: three instances of the reference backend start together
while clients arrive at a steady, stated rate; what did each instance do with them?

Per instance: admitted at once, held then served, rejected (by reason), and 1011s (must
be 0, counted by the clients). The release is timed from the instance's own ``ready_at``
(its record in Redis) to its last held client served (welcome and one echo), and set
against the ceiling: the same servers' raw handshake rate, measured right after with the
same client, the same number of clients per instance, all three at once.

    python -m bench.startup_storm [--smoke]
"""

from __future__ import annotations

import asyncio
import functools
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as redis

from coordinator.contract.keys import Keys
from coordinator.contract.record import decode_record
from coordinator.fleet.registry import read_record
from harness.chat import CHAT, CLOSE, Outcome, chat, counters, health, tally
from harness.processes import BackendProcess

from ._support import RedisServer, Report, run_benchmark, wait_until

NAMESPACE = "bench-storm"
INSTANCES = 3


@dataclass(frozen=True)
class Plan:
    clients: int
    seconds: float  # arrivals spread evenly over this long, from the moment all listen
    services: float  # the ready phase's duration
    max_queue: int

    @property
    def rate(self) -> float:
        return self.clients / self.seconds

    @property
    def durations(self) -> str:
        return ("init=0.05,dependencies=0.2,database=0.3,cache=0.2,"
                f"services={self.services},websocket=0.1,finalize=0.05")


@dataclass
class Arrival:
    instance: int
    started: float  # unix time the client began its handshake
    outcome: Outcome

    @property
    def finished(self) -> float:
        return self.started + self.outcome.elapsed


async def arrive(urls: list[str], plan: Plan) -> tuple[list[Arrival], float]:
    """Launch plan.clients clients at plan.rate, round robin; the achieved rate too."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Arrival]] = []

    async def one(i: int) -> Arrival:
        started = time.time()
        return Arrival(i % len(urls), started, await chat(urls[i % len(urls)], f"c{i}", 35.0))

    begin = loop.time()
    for i in range(plan.clients):
        delay = begin + i / plan.rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    achieved = plan.clients / max(loop.time() - begin, 1e-9)
    return list(await asyncio.gather(*tasks)), achieved


async def ready_at(client: redis.Redis, instance_id: str) -> float:
    record = decode_record(await read_record(client, Keys(NAMESPACE), instance_id))
    value = record.get("ready_at")
    if value is None:
        raise RuntimeError(f"instance {instance_id} has no ready_at in its record: {record}")
    return float(value)


async def raw_rate(urls: list[str], counts: list[int]) -> list[tuple[int, float]]:
    """``counts[i]`` fresh clients on each ready instance, all at once: (n, seconds)."""
    async def burst(url: str, n: int) -> tuple[int, float]:
        started = time.monotonic()
        outcomes = await asyncio.gather(*(chat(url, f"raw{i}", 35.0) for i in range(n)))
        if any(o.kind != CHAT for o in outcomes):
            raise RuntimeError(f"raw handshakes on a ready instance failed: {tally(outcomes)}")
        return n, time.monotonic() - started
    return list(await asyncio.gather(*(burst(u, n) for u, n in zip(urls, counts, strict=True))))


def summarise(report: Report, plan: Plan, arrivals: list[Arrival], achieved: float,
              bodies: list[dict], readies: list[float], raw: list[tuple[int, float]]) -> None:
    report.figure("setup", f"{INSTANCES} backends (services phase {plan.services} s, "
                           f"COORD_MAX_QUEUE={plan.max_queue}); {plan.clients} clients at "
                           f"{plan.rate:.0f}/s stated, {achieved:.0f}/s achieved, round robin, "
                           "from the moment all three listen")
    total_1011 = 0
    for i, (body, ready) in enumerate(zip(bodies, readies, strict=True)):
        mine = [a for a in arrivals if a.instance == i]
        counts = counters(body)
        seen = tally(a.outcome for a in mine)
        n1011 = sum(1 for a in mine if a.outcome.kind == CLOSE and a.outcome.code == 1011)
        total_1011 += n1011
        held = [a for a in mine if a.outcome.kind == CHAT and a.started < ready]
        served = max((a.finished for a in held), default=ready) - ready
        n, seconds = raw[i]
        raw_per_s = n / seconds
        release_per_s = len(held) / served if held and served > 0 else float("inf")
        before = sum(1 for a in mine if a.started < ready)
        report.figure(f"instance {i + 1}",
                      f"{len(mine)} clients ({before} before ready): admitted at once "
                      f"{counts['admitted'].get('immediate', 0)}, held then served "
                      f"{counts['admitted'].get('after_hold', 0)}, rejected "
                      f"{dict(counts['rejected'])}; clients saw {dict(seen)}")
        report.figure(f"instance {i + 1} release",
                      f"{len(held)} held clients served {served * 1000:.0f} ms after ready "
                      f"({release_per_s:.0f}/s); raw: {n} fresh clients in "
                      f"{seconds * 1000:.0f} ms ({raw_per_s:.0f}/s)")
        if held:
            report.ratio(f"instance{i + 1}.release_rate_vs_raw", release_per_s / raw_per_s,
                         ">=", None, "held clients served per second after ready / fresh "
                         "clients per second on the same ready server")
    other = Counter(a.outcome.kind for a in arrivals if a.outcome.kind not in (CHAT, "http")
                    and not (a.outcome.kind == CLOSE and a.outcome.code in (1011, 1012, 1013)))
    report.figure("clients that neither chatted nor got a clean rejection", str(dict(other)))
    report.ratio("close_1011", float(total_1011), "<=", 0.0,
                 f"1011s over {len(arrivals)} clients, counted by the clients")


def listening(backend: BackendProcess) -> bool:
    return backend.get("/health/live")[0] == 200


async def bench(report: Report, redis_server: RedisServer) -> None:
    plan = (Plan(clients=60, seconds=1.0, services=0.5, max_queue=10) if report.smoke
            else Plan(clients=2000, seconds=4.0, services=3.0, max_queue=200))
    logs = Path(tempfile.mkdtemp(prefix="bench-storm-"))
    backends = [BackendProcess({"COORD_REDIS_URL": redis_server.url,
                                "COORD_NAMESPACE": NAMESPACE, "COORD_ENVIRONMENT": "test",
                                "COORD_INSTANCE_ID": f"storm-{i + 1}",
                                "COORD_MAX_QUEUE": str(plan.max_queue),
                                "COORD_DRAIN_GRACE": "0",
                                "BACKEND_PHASE_DURATIONS": plan.durations},
                               logs / f"backend-{i + 1}.log") for i in range(INSTANCES)]
    client = redis.Redis.from_url(redis_server.url)
    try:
        for backend in backends:
            backend.start(wait=False)
        for backend in backends:
            wait_until(functools.partial(listening, backend), 30, what="a backend to listen")
        arrivals, achieved = await arrive([b.ws_url for b in backends], plan)
        for backend in backends:
            backend.wait_ready(30)
        bodies = [health(b)[1] for b in backends]
        readies = [await ready_at(client, f"storm-{i + 1}") for i in range(INSTANCES)]
        held = [max(1, body["admitted"].get("after_hold", 0)) for body in bodies]
        raw = await raw_rate([b.ws_url for b in backends], held)
        summarise(report, plan, arrivals, achieved, bodies, readies, raw)
    finally:
        await client.aclose()
        for backend in backends:
            if backend.proc is not None:
                backend.terminate()


def main(argv: list[str] | None = None) -> int:
    return run_benchmark("startup_storm", __doc__, bench, argv)


if __name__ == "__main__":
    sys.exit(main())
