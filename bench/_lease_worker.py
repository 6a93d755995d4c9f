"""One process of the lease-throughput benchmark.

    python -m bench._lease_worker URL KEY INSTANCE CAP CONCURRENCY

Connects, warms up, prints "ready", then for every "<mode> <seconds>" line on stdin
(mode ``leases``: FleetLeases acquire then release; ``raw``: EVALSHA of an empty script)
runs CONCURRENCY loops for that long on one client and prints one JSON line of counts.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time

from coordinator._redis.client import make_redis
from coordinator.fleet.leases import LEASED, FleetLeases

EMPTY = "return 0"
HOLD_FOR = 30.0


async def run(url: str, key: str, instance: str, cap: int, concurrency: int) -> None:
    client = make_redis(url)
    leases = FleetLeases(client, key, instance, cap)
    empty = client.register_script(EMPTY)
    conns = itertools.count(1)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def leases_loop(deadline: float, counts: dict[str, int]) -> None:
        while time.monotonic() < deadline:
            conn = next(conns)
            outcome = await leases.acquire(conn, HOLD_FOR)
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome == LEASED:
                leases.release(conn)

    async def raw_loop(deadline: float, counts: dict[str, int]) -> None:
        while time.monotonic() < deadline:
            await empty()
            counts["calls"] = counts.get("calls", 0) + 1

    try:
        await empty()
        warm = next(conns)
        await leases.acquire(warm, 1.0)
        leases.release(warm)
        print("ready", flush=True)
        while line := (await reader.readline()).decode().split():
            mode, seconds = line[0], float(line[1])
            counts: dict[str, int] = {}
            body = leases_loop if mode == "leases" else raw_loop
            started = time.monotonic()
            await asyncio.gather(*(body(started + seconds, counts) for _ in range(concurrency)))
            print(json.dumps({"mode": mode, "seconds": time.monotonic() - started, **counts}),
                  flush=True)
    finally:
        await leases.close()
        await client.aclose()


if __name__ == "__main__":
    url, key, instance, cap, concurrency = sys.argv[1:6]
    asyncio.run(run(url, key, instance, int(cap), int(concurrency)))
