"""Benchmark 4, fleet scale: the fleet view and ``coordinator fleet --json`` with 10, 100,
1,000 and 5,000 registered instances, and what one instance's heartbeat costs.

The records are synthetic but real: one Coordinator's own ``record()`` with the id
varied, written through ``write_record``. Each size is timed in process
(``fleet_snapshot``, and the CLI's ``fleet`` command with ``--json`` output to
a buffer), median of several runs, with Redis round trips counted by a connection class
that counts every request it sends (a pipeline is one). ``coordinator fleet --json`` is
also run once per size as the process users start, for its wall time.

The heartbeat: a ready owner Coordinator runs with its heartbeat interval at 0.1 s
through a byte-counting relay; commands come from INFO commandstats deltas.

    python -m bench.fleet_scale [--smoke]
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import statistics
import subprocess
import sys
import time

import redis.asyncio as redis

from coordinator import Coordinator, Settings
from coordinator.contract.keys import Keys
from coordinator.contract.record import as_text
from coordinator.fleet.registry import write_record
from coordinator.fleet.view import PAGE_SIZE, fleet_snapshot
from coordinator.ops.cli import fleet as cli_fleet

from ._support import (
    ROOT,
    CountingConnection,
    CountingProxy,
    RedisServer,
    Report,
    command_calls,
    commands_delta,
    reply_parser,
    run_benchmark,
)

NAMESPACE = "bench-fleet"
TTL = 600.0  # the records must outlive the benchmark
HEARTBEAT = 0.1


async def fill(client: redis.Redis, keys: Keys, template: dict[str, str], start: int,
               stop: int) -> None:
    now = time.time()
    for i in range(start, stop):
        record = dict(template, id=f"instance-{i:05d}", heartbeat_at=f"{now:.6f}",
                      host=f"host-{i % 97}", pid=str(1000 + i),
                      state="ready" if i % 10 else "starting")
        await write_record(client, keys, record, TTL, now)


async def timed(runs: int, call: object) -> tuple[float, float]:
    """Median seconds and round trips per call of ``call()`` (after one warm-up)."""
    await call()  # type: ignore[operator]
    seconds: list[float] = []
    before = CountingConnection.round_trips
    for _ in range(runs):
        started = time.perf_counter()
        await call()  # type: ignore[operator]
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), (CountingConnection.round_trips - before) / runs


def cli_process(url: str) -> tuple[float, int]:
    """``coordinator fleet --json`` as a process: wall seconds, output bytes."""
    env = {**os.environ, "COORD_REDIS_URL": url, "COORD_NAMESPACE": NAMESPACE}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "coordinator", "fleet", "--json"], cwd=ROOT,
                          env=env, capture_output=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"coordinator fleet --json failed: {done.stderr.decode()[-500:]}")
    return time.perf_counter() - started, len(done.stdout)


async def raw_pages(client: redis.Redis, keys: Keys) -> None:
    """The floor: the same reads as the snapshot (the index, then HGETALL per instance in
    pages), with nothing decoded or built."""
    ids = await client.zrange(keys.instances, 0, -1)
    for start in range(0, len(ids), PAGE_SIZE):
        async with client.pipeline(transaction=False) as pipe:
            for instance_id in ids[start:start + PAGE_SIZE]:
                pipe.hgetall(keys.instance(as_text(instance_id)))
            await pipe.execute()


async def fleet_sizes(report: Report, url: str, sizes: list[int], runs: int) -> None:
    pool = redis.ConnectionPool.from_url(url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    keys = Keys(NAMESPACE)
    owner = Coordinator(Settings(redis_url=url, namespace=NAMESPACE, instance_ttl=TTL,
                                 environment="test")).owner
    assert owner is not None
    template = owner.record()
    per_page: list[float] = []
    written = 0
    try:
        for size in sizes:
            await fill(client, keys, template, written, size)
            written = size
            snapshot = await fleet_snapshot(client, keys)
            if snapshot["totals"]["instances"] != size:
                raise RuntimeError(f"snapshot saw {snapshot['totals']['instances']} of {size}")
            repeat = max(3, min(runs, 5000 // size))
            snap_s, snap_rt = await timed(repeat, lambda: fleet_snapshot(client, keys))
            floor_s, _ = await timed(repeat, lambda: raw_pages(client, keys))
            out = io.StringIO()
            cli_s, cli_rt = await timed(repeat, lambda out=out: cli_fleet(client, keys, True, out))
            process_s, size_bytes = cli_process(url)
            pages = math.ceil(size / PAGE_SIZE)
            per_page.append((snap_rt - 1) / pages)
            report.figure(f"{size:>5} instances",
                          f"fleet_snapshot {snap_s * 1000:7.2f} ms, {snap_rt:.0f} round trips "
                          f"({pages} page(s) of {PAGE_SIZE}); the same reads alone "
                          f"{floor_s * 1000:.2f} ms; CLI fleet --json in "
                          f"process {cli_s * 1000:7.2f} ms, {cli_rt:.0f} round trips; "
                          f"as a process {process_s * 1000:.0f} ms, {size_bytes} bytes of JSON")
            if size == 1000:
                report.ratio("snapshot_1000_ms", snap_s * 1000, "<=", 20.0,
                             f"fleet_snapshot of 1,000 instances, median of {repeat}; "
                             f"reply parser {reply_parser()}")
                report.ratio("snapshot_1000_vs_reads_alone", snap_s / floor_s, "<=", None,
                             "fleet_snapshot / the same pipelined HGETALLs with nothing decoded")
                report.ratio("cli_json_1000_ms", cli_s * 1000, "<=", 20.0,
                             "coordinator fleet --json of 1,000 instances, in process")
    finally:
        await client.aclose()
        await pool.aclose()
    report.ratio("round_trips_per_page", max(per_page), "<=", 1.0,
                 "round trips beyond the first, per page, worst size: "
                 + ", ".join(f"{p:.2f}" for p in per_page))


async def heartbeat_cost(report: Report, redis_port: int, url: str, seconds: float) -> None:
    observer = redis.Redis.from_url(url)
    try:
        async with CountingProxy(redis_port) as proxy:
            settings = Settings(redis_url=proxy.url, namespace=NAMESPACE + "-hb",
                                heartbeat_interval=HEARTBEAT, instance_ttl=2.0,
                                environment="test")
            async with Coordinator(settings) as coord:
                for name in coord.plan.phases:
                    async with coord.phase(name):
                        pass
                await asyncio.sleep(5 * HEARTBEAT)  # start-up publishing settles
                before = await command_calls(observer)
                sent, received = proxy.bytes.to_redis, proxy.bytes.from_redis
                started = time.monotonic()
                await asyncio.sleep(seconds)
                elapsed = time.monotonic() - started
                delta = commands_delta(before, await command_calls(observer))
                sent, received = proxy.bytes.to_redis - sent, proxy.bytes.from_redis - received
    finally:
        await observer.aclose()
    intervals = elapsed / HEARTBEAT
    per = {name: round(n / intervals, 2) for name, n in sorted(delta.items())}
    report.figure("heartbeat, per instance per interval",
                  f"{sum(delta.values()) / intervals:.2f} commands {per}, "
                  f"{sent / intervals:.0f} bytes to Redis, {received / intervals:.0f} bytes back "
                  f"(over {intervals:.0f} intervals of {HEARTBEAT} s)")
    report.figure("heartbeat, 1,000 instances at the default 2 s interval",
                  f"{sum(delta.values()) / intervals * 500:.0f} commands/s, "
                  f"{(sent + received) / intervals * 500 / 1024:.0f} KiB/s")
    report.ratio("heartbeat_round_trips_per_interval", delta.get("exec", 0) / intervals, "<=",
                 1.0, "MULTI..EXEC transactions per interval (one round trip each)")


async def bench(report: Report, redis_server: RedisServer) -> None:
    sizes, runs, beat = (([10, 100], 2, 1.0) if report.smoke
                         else ([10, 100, 1000, 5000], 9, 3.0))
    await fleet_sizes(report, redis_server.url, sizes, runs)
    await heartbeat_cost(report, redis_server.port, redis_server.url, beat)


def main(argv: list[str] | None = None) -> int:
    return run_benchmark("fleet_scale", __doc__, bench, argv)


if __name__ == "__main__":
    sys.exit(main())
