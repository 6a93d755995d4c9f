"""Benchmark 1, fast-path cost: a WebSocket handshake plus one echo through the gate on a
ready instance, against the same echo app without the gate.

Same uvicorn process (routes /gated and /bare of bench._server), same client (the
``websockets`` library), rounds interleaved ABBA so that drift and neighbours' noise
fall on both sides alike. Redis commands on the gated path are counted with INFO
commandstats deltas on the benchmark's own redis-server, around every gated round; the
heartbeat interval is set to an hour so that no heartbeat falls inside the count.

    python -m bench.fast_path [--smoke]
"""

from __future__ import annotations

import asyncio
import sys
import time

import redis.asyncio as redis
from websockets.asyncio.client import connect

from ._support import BenchServer, RedisServer, Report, command_calls, commands_delta, \
    parse_args, pct

CONCURRENCY = 4


async def one_echo(url: str) -> None:
    async with connect(url, compression=None) as ws:
        await ws.send("ping")
        if await ws.recv() != "ping":
            raise RuntimeError("echo mismatch")


async def run_round(url: str, count: int) -> float:
    """``count`` handshake+echo+close sequences, CONCURRENCY at a time; seconds taken."""
    todo = iter(range(count))

    async def worker() -> None:
        for _ in todo:
            await one_echo(url)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - started


async def measure(report: Report, server: BenchServer, client: redis.Redis, rounds: int,
                  per_round: int) -> None:
    gated, bare = server.url("/gated"), server.url("/bare")
    await run_round(gated, per_round // 2)  # warm both paths up
    await run_round(bare, per_round // 2)
    seconds: dict[str, list[float]] = {"gated": [], "bare": []}
    commands: dict[str, int] = {}
    for i in range(rounds):
        order = ("gated", "bare") if i % 2 == 0 else ("bare", "gated")
        for side in order:
            if side == "gated":
                before = await command_calls(client)
                seconds[side].append(await run_round(gated, per_round))
                for name, n in commands_delta(before, await command_calls(client)).items():
                    commands[name] = commands.get(name, 0) + n
            else:
                seconds[side].append(await run_round(bare, per_round))
    status = server.status()
    ops = rounds * per_round
    rate = {side: ops / sum(s) for side, s in seconds.items()}
    pairs = [b / g for g, b in zip(seconds["gated"], seconds["bare"], strict=True)]
    report.figure("rounds", f"{rounds} x {per_round} handshake+echo+close per side, "
                            f"{CONCURRENCY} concurrent clients, ABBA order")
    for side in ("bare", "gated"):
        report.figure(f"{side:5} ops/s",
                      f"{rate[side]:.0f}  (rounds {_spread(per_round, seconds[side])})")
    report.figure("per-round-pair ratio gated/bare",
                  f"median {pct(pairs, 50):.3f}, p10 {pct(pairs, 10):.3f}, "
                  f"p90 {pct(pairs, 90):.3f}")
    report.figure("gate admitted immediately", str(status["admitted"].get("immediate", 0)))
    report.ratio("throughput", rate["gated"] / rate["bare"], ">=", 0.97,
                 f"gated {rate['gated']:.0f}/s vs bare {rate['bare']:.0f}/s, {ops} each")
    count = sum(commands.values())
    report.figure("redis commands during gated rounds",
                  f"{count} over {ops} gated connections {commands or ''}".rstrip())
    report.ratio("redis_commands_per_connection", count / ops, "<=", 0.0,
                 f"{count} commands / {ops} connections; heartbeat interval 3600 s")


def _spread(per_round: int, seconds: list[float]) -> str:
    rates = [per_round / s for s in seconds]
    return f"min {min(rates):.0f}, median {pct(rates, 50):.0f}, max {max(rates):.0f}"


async def amain(smoke: bool) -> int:
    report = Report("fast_path", smoke)
    rounds, per_round = (2, 20) if smoke else (96, 50)
    redis_server = RedisServer().start()
    try:
        env = {"COORD_REDIS_URL": redis_server.url, "COORD_NAMESPACE": "bench-fast",
               "COORD_HEARTBEAT_INTERVAL": "3600", "COORD_INSTANCE_TTL": "7200",
               "BENCH_ROLE": "owner", "BENCH_START": "ready"}
        with BenchServer(env, "fast-path") as server:
            server.wait_status("instance ready",
                               lambda s: s["state"] == "ready" and s["redis"], 30)
            client = redis.Redis.from_url(redis_server.url)
            try:
                await measure(report, server, client, rounds, per_round)
            finally:
                await client.aclose()
    finally:
        redis_server.kill()
    return report.done()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    return asyncio.run(amain(args.smoke))


if __name__ == "__main__":
    sys.exit(main())
