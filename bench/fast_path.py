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
from typing import Any

import redis.asyncio as redis
from websockets.asyncio.client import connect

from coordinator import ConnectionGate, Coordinator, Settings

from ._support import (
    BenchServer,
    RedisServer,
    Report,
    command_calls,
    commands_delta,
    pct,
    run_benchmark,
)

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
    cpu = {"gated": 0.0, "bare": 0.0}  # the server process's CPU seconds
    commands: dict[str, int] = {}
    for i in range(rounds):
        order = ("gated", "bare") if i % 2 == 0 else ("bare", "gated")
        for side in order:
            cpu_before = server.status()["cpu"]
            before = await command_calls(client)
            seconds[side].append(await run_round(gated if side == "gated" else bare, per_round))
            after = await command_calls(client)
            cpu[side] += server.status()["cpu"] - cpu_before
            if side == "gated":
                for name, n in commands_delta(before, after).items():
                    commands[name] = commands.get(name, 0) + n
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
    per_op = {side: cpu[side] / ops * 1e6 for side in cpu}
    report.figure("server CPU per connection",
                  f"bare {per_op['bare']:.0f} us, gated {per_op['gated']:.0f} us "
                  "(the server's process_time, status calls included on both sides)")
    report.ratio("server_cpu_bare_vs_gated", per_op["bare"] / per_op["gated"], ">=", None,
                 "server CPU per connection, bare / gated: the throughput ratio a "
                 "server-bound deployment would see")
    gate_us, app_us = await gate_cost_in_process(2000 if report.smoke else 50000)
    report.figure("the gate's own fast path, in process",
                  f"{gate_us - app_us:.2f} us per connection (gate + no-op app {gate_us:.2f} us, "
                  f"no-op app alone {app_us:.2f} us), i.e. "
                  f"{(gate_us - app_us) / per_op['bare'] * 100:.2f}% of the bare server's CPU "
                  "per connection")
    count = sum(commands.values())
    report.figure("redis commands during gated rounds",
                  f"{count} over {ops} gated connections {commands or ''}".rstrip())
    report.ratio("redis_commands_per_connection", count / ops, "<=", 0.0,
                 f"{count} commands / {ops} connections; heartbeat interval 3600 s")


async def gate_cost_in_process(calls: int) -> tuple[float, float]:
    """Microseconds per ASGI call: a ready gate in front of a no-op app, and the app alone."""
    coord = Coordinator(Settings(redis_url="redis://127.0.0.1:1/0", environment="test"))
    for name in coord.plan.phases:  # never started: no Redis, nothing but the status
        async with coord.phase(name):
            pass

    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    gate = ConnectionGate(app, coord)
    scope = {"type": "websocket", "path": "/gated"}
    receive: Any = None  # neither the ready gate nor the app calls them
    send: Any = None
    best: dict[str, float] = {}
    for _ in range(3):
        for name, target in (("gate", gate), ("app", app)):
            started = time.perf_counter()
            for _ in range(calls):
                await target(scope, receive, send)
            elapsed = (time.perf_counter() - started) / calls * 1e6
            best[name] = min(best.get(name, elapsed), elapsed)
    await coord.redis.aclose()
    return best["gate"], best["app"]


def _spread(per_round: int, seconds: list[float]) -> str:
    rates = [per_round / s for s in seconds]
    return f"min {min(rates):.0f}, median {pct(rates, 50):.0f}, max {max(rates):.0f}"


async def bench(report: Report, redis_server: RedisServer) -> None:
    rounds, per_round = (2, 20) if report.smoke else (96, 50)
    env = {"COORD_REDIS_URL": redis_server.url, "COORD_NAMESPACE": "bench-fast",
           "COORD_HEARTBEAT_INTERVAL": "1800", "COORD_INSTANCE_TTL": "3600",
           "BENCH_ROLE": "owner", "BENCH_START": "ready"}
    with BenchServer(env, "fast-path") as server:
        server.wait_status("instance ready", lambda s: s["state"] == "ready" and s["redis"], 30)
        client = redis.Redis.from_url(redis_server.url)
        try:
            await measure(report, server, client, rounds, per_round)
        finally:
            await client.aclose()


def main(argv: list[str] | None = None) -> int:
    return run_benchmark("fast_path", __doc__, bench, argv)


if __name__ == "__main__":
    sys.exit(main())
