"""Benchmark 6, memory: what a held handshake costs the server, gate included.

The same server (bench._server, its instance held inside the ready phase) takes N
handshakes either through the gate (route /gated: held) or on a bare app that takes the
handshake and simply waits, never accepting (route /park: the server's own cost of a
connection parked before accept). RSS is read from /proc before and after, with the
server warmed up on the same route first; every round starts fresh processes, rounds
alternate, and the median per-connection figure of each side is compared.

    python -m bench.memory [--smoke]
"""

from __future__ import annotations

import asyncio
import statistics
import sys

from ._support import BenchServer, RedisServer, Report, open_handshakes, run_benchmark

WARM_UP = 50
SETTLE = 0.5  # seconds for the server to finish with the last handshake before RSS is read


async def one_round(redis_url: str, route: str, count: int) -> float:
    """KiB of server RSS per connection held on ``route``, from a fresh server."""
    counter = "held" if route == "/gated" else "parked"
    env = {"COORD_REDIS_URL": redis_url, "COORD_NAMESPACE": "bench-memory",
           "COORD_MAX_QUEUE": str(count + WARM_UP), "COORD_MAX_QUEUE_TIME": "300",
           "BENCH_ROLE": "owner", "BENCH_START": "hold"}
    with BenchServer(env, f"memory{route.replace('/', '-')}") as server:
        await server.until("the instance to hold", lambda s: s["phase"] == "services")
        warm = await open_handshakes(server.port, route, WARM_UP)
        await server.until("warm-up connections", lambda s: s[counter] == WARM_UP)
        for h in warm:
            h.close()
        await server.until("warm-up to end", lambda s: s[counter] == 0)
        await asyncio.sleep(SETTLE)
        before = server.rss_kib()
        handshakes = await open_handshakes(server.port, route, count)
        try:
            await server.until(f"{count} {counter}", lambda s: s[counter] == count, 60)
            await asyncio.sleep(SETTLE)
            after = server.rss_kib()
        finally:
            for h in handshakes:
                h.close()
    return (after - before) / count


async def bench(report: Report, redis_server: RedisServer) -> None:
    count, rounds = (50, 1) if report.smoke else (1000, 3)
    per: dict[str, list[float]] = {"/gated": [], "/park": []}
    for i in range(rounds):
        for route in ("/gated", "/park") if i % 2 == 0 else ("/park", "/gated"):
            per[route].append(await one_round(redis_server.url, route, count))
    gated, bare = statistics.median(per["/gated"]), statistics.median(per["/park"])
    report.figure("setup", f"{count} handshakes per round, {rounds} round(s) per side, fresh "
                           "server each round, RSS from /proc/<pid>/status")
    report.figure("held through the gate", f"{gated:.1f} KiB each (rounds: "
                  + ", ".join(f"{x:.1f}" for x in per["/gated"]) + ")")
    report.figure("parked by a bare app", f"{bare:.1f} KiB each (rounds: "
                  + ", ".join(f"{x:.1f}" for x in per["/park"]) + ")")
    report.ratio("gate_kib_per_held", gated - bare, "<=", 2.0,
                 f"RSS per held handshake, gate {gated:.1f} KiB minus bare {bare:.1f} KiB")
    report.ratio("gated_vs_bare", gated / bare, "<=", None,
                 "RSS per connection, gated / bare")


def main(argv: list[str] | None = None) -> int:
    return run_benchmark("memory", __doc__, bench, argv)


if __name__ == "__main__":
    sys.exit(main())
