"""Benchmark 5, lease throughput: fleet-lease acquire/release pairs per second under
contention from several processes, against raw EVALSHA of an empty script on the same
Redis, from the same processes, the same client and the same concurrency.

Every process runs CONCURRENCY loops on one client. ``leases``: FleetLeases.acquire (the
Lua acquire script, through the library's own path) then release (queued, flushed in
batches by the library's release task). ``raw``: EVALSHA of ``return 0``. Rounds
alternate; each mode's rate is its total over its rounds.

    python -m bench.lease_throughput [--smoke]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections import Counter

import redis.asyncio as redis

from ._support import LineProcess, RedisServer, Report, command_calls, commands_delta, run_benchmark

KEY = "bench-leases:leases"
PROCESSES = 4
CONCURRENCY = 8
CAP_PER_LOOP = 10  # releases are flushed in batches, so a cap of one per loop would refuse


async def measure(report: Report, url: str, rounds: int, seconds: float) -> None:
    cap = CAP_PER_LOOP * PROCESSES * CONCURRENCY
    workers = [LineProcess("bench._lease_worker", url, KEY, f"bench-{i}", str(cap),
                           str(CONCURRENCY)) for i in range(PROCESSES)]
    totals: dict[str, Counter[str]] = {"leases": Counter(), "raw": Counter()}
    elapsed: dict[str, float] = {"leases": 0.0, "raw": 0.0}
    server: dict[str, dict[str, int]] = {}
    observer = redis.Redis.from_url(url)
    try:
        async with contextlib.AsyncExitStack() as stack:
            for worker in workers:
                await stack.enter_async_context(worker)
            await asyncio.gather(*(w.read() for w in workers))  # each says "ready"
            for i in range(rounds):
                for mode in (("raw", "leases") if i % 2 == 0 else ("leases", "raw")):
                    before = await command_calls(observer)
                    for worker in workers:
                        worker.send(f"{mode} {seconds}")
                    results = [json.loads(line) for line in
                               await asyncio.gather(*(w.read() for w in workers))]
                    for name, n in commands_delta(before, await command_calls(observer)).items():
                        server.setdefault(mode, {})[name] = server.get(mode, {}).get(name, 0) + n
                    elapsed[mode] += max(r["seconds"] for r in results)
                    for r in results:
                        totals[mode].update({k: int(v) for k, v in r.items()
                                             if k not in ("mode", "seconds")})
        remaining = await observer.zcard(KEY)  # the workers have closed their leases
    finally:
        await observer.aclose()
    raw_rate = totals["raw"]["calls"] / elapsed["raw"]
    leased = totals["leases"]["leased"]
    pair_rate = leased / elapsed["leases"]
    report.figure("setup", f"{PROCESSES} processes x {CONCURRENCY} concurrent loops, fleet cap "
                           f"{cap}, {rounds} x {seconds:g} s rounds per mode, alternating")
    report.figure("raw EVALSHA (return 0)", f"{raw_rate:.0f} calls/s")
    report.figure("lease acquire+release", f"{pair_rate:.0f} pairs/s (outcomes "
                  f"{dict(totals['leases'])}; leases left after the workers closed: {remaining})")
    report.figure("server commands, leases mode", str(server.get("leases", {})))
    report.ratio("pairs_vs_raw_evalsha", pair_rate / raw_rate, ">=", 0.5,
                 f"{pair_rate:.0f} acquire/release pairs/s vs {raw_rate:.0f} raw EVALSHA/s")


async def bench(report: Report, redis_server: RedisServer) -> None:
    rounds, seconds = (2, 0.3) if report.smoke else (4, 2.0)
    await measure(report, redis_server.url, rounds, seconds)


def main(argv: list[str] | None = None) -> int:
    return run_benchmark("lease_throughput", __doc__, bench, argv)


if __name__ == "__main__":
    sys.exit(main())
