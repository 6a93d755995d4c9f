"""Benchmark 9, a forged fleet: what oversized records written into the namespace cost a
real backend that serves ``/fleet`` (issue 19's figures).

A writer to Redis adds 400 hashes of 1 MiB each to the instance index (10 of 64 KiB with
``--smoke``). A real backend (``python -m backend`` under uvicorn, its operator routes
on) is asked for ``/fleet`` as fast as one client can, which is what an open dashboard
and a scraper do, while another client times ``/health/live``, the route a platform's
liveness probe hits on the same event loop that gates handshakes. Two arms in this
process, one after the other against the same backend: ``clean`` (the backend's own
record only) and ``forged``. For each: ``/health/live`` p50, p99 and max, and the
longest command Redis ran (``SLOWLOG`` with a threshold of 0: the time Redis was blocked
for everyone). Beside each timing, the client's own event-loop lag (a 10 ms ticker's
worst overshoot): a lagging client reports latency the server never caused.

Goals (issue 19): with 400 x 1 MiB forged records ``/health/live`` p99 under 150 ms, and
Redis never blocked more than 250 ms.

    python -m bench.forged_fleet [--smoke]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as redis

from coordinator.contract.keys import Keys
from harness.processes import BackendProcess

from ._support import RedisServer, Report, pct, run_benchmark

NAMESPACE = "bench-forged"
DURATION = 8.0  # seconds per arm
PROBE_EVERY = 0.05  # seconds between two /health/live probes


class LagMeter:
    """The client's own event-loop lag: how late a 10 ms sleep wakes, worst seen."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.perf_counter() - started - 0.01)

    def __enter__(self) -> LagMeter:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def get(port: int, path: str) -> tuple[int, int]:
    """GET ``path``: (status, body bytes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                     .encode())
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), len(body)


async def arm(report: Report, name: str, port: int, client: redis.Redis,
              duration: float) -> None:
    await client.config_set("slowlog-log-slower-than", 0)
    await client.config_set("slowlog-max-len", 100_000)
    await client.slowlog_reset()
    stop = time.monotonic() + duration
    fleet_bytes: list[int] = []

    async def fleet() -> None:
        while time.monotonic() < stop:
            status, size = await get(port, "/fleet")
            if status == 200:
                fleet_bytes.append(size)

    probes: list[float] = []
    with LagMeter() as lag:
        reader = asyncio.create_task(fleet())
        while time.monotonic() < stop:
            started = time.perf_counter()
            status, _ = await get(port, "/health/live")
            probes.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"/health/live answered {status}")
            await asyncio.sleep(PROBE_EVERY)
        await reader
    entries = await client.slowlog_get(100_000)
    longest = max(entries, key=lambda e: e["duration"]) if entries else None
    blocked = (longest["duration"] / 1e6) if longest else 0.0
    command = (longest["command"][:60] if isinstance(longest["command"], bytes)
               else str(longest["command"])[:60]) if longest else b""
    report.figure(f"{name}: /health/live", (
        f"p50 {pct(probes, 50) * 1000:.1f} ms  p99 {pct(probes, 99) * 1000:.1f} ms  "
        f"max {max(probes) * 1000:.1f} ms  (n={len(probes)}; client loop lag worst "
        f"{lag.worst * 1000:.1f} ms)"))
    report.figure(f"{name}: /fleet", f"{len(fleet_bytes)} answers, "
                  f"{(max(fleet_bytes) if fleet_bytes else 0) / 1024:.0f} KiB at most")
    report.figure(f"{name}: Redis blocked", f"longest command {blocked * 1000:.1f} ms "
                  f"({command!r})")
    ARMS[name] = (pct(probes, 99), blocked, lag.worst)


ARMS: dict[str, tuple[float, float, float]] = {}


async def forge(client: redis.Redis, keys: Keys, count: int, size: int) -> None:
    now = time.time()
    value = b"x" * size
    for i in range(count):
        member = f"forged-{i:04d}"
        async with client.pipeline(transaction=False) as pipe:
            pipe.hset(keys.instance(member), mapping={"id": member, "state": "ready",
                                                      "heartbeat_at": f"{now:.6f}",
                                                      "ttl": "600", "junk": value})
            pipe.zadd(keys.instances, {member: now})
            await pipe.execute()


async def body(report: Report, server: RedisServer) -> None:
    count, size = (10, 64 << 10) if report.smoke else (400, 1 << 20)
    duration = 2.0 if report.smoke else DURATION
    keys = Keys(NAMESPACE)
    client = redis.Redis.from_url(server.url)
    logs = Path(tempfile.mkdtemp(prefix="bench-forged-"))
    backend = BackendProcess({"COORD_REDIS_URL": server.url, "COORD_NAMESPACE": NAMESPACE,
                              "COORD_INSTANCE_ID": "bench-forged-i1",
                              "BACKEND_PHASE_DURATIONS": "services=0"},
                             logs / "backend.log")
    try:
        backend.start()
        await arm(report, "clean", backend.port, client, duration)
        await forge(client, keys, count, size)
        report.note(f"forged {count} records of {size >> 10} KiB into {keys.instances}")
        await arm(report, "forged", backend.port, client, duration)
    finally:
        with contextlib.suppress(Exception):
            backend.kill()
        await client.aclose()
    (clean_p99, _, clean_lag), (p99, blocked, lag) = ARMS["clean"], ARMS["forged"]
    side = "the client" if lag > p99 / 2 else "the server"
    report.ratio("health_live_p99_ms", p99 * 1000, "<=", 150,
                 f"/health/live p99 with {count} forged records, {side} limits it "
                 f"(client lag {lag * 1000:.1f} ms)")
    report.ratio("health_live_p99.forged_vs_clean", p99 / clean_p99, "-", None,
                 f"p99 forged {p99 * 1000:.1f} ms / clean {clean_p99 * 1000:.1f} ms "
                 f"(client lag {lag * 1000:.1f} / {clean_lag * 1000:.1f} ms)")
    report.ratio("redis_blocked_ms", blocked * 1000, "<=", 250,
                 "the longest command Redis ran while /fleet was read")


def main(argv: list[str] | None = None) -> int:
    return run_benchmark("forged_fleet", __doc__ or "", body, argv)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
