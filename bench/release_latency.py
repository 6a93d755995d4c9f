"""Benchmark 2, release latency: how soon after the ready phase completes do held
handshakes get their 101?

Each trial holds 50 handshakes on an instance, waits a random 0.25 to 1.25 s (0.05 to
0.15 s, and five times the trials for a real p99, in the modes whose release does not
depend on it), completes the ready phase and times every client's 101 (the first byte of
its answer, read by a raw-socket client) from that completion. Modes, interleaved:

  pubsub        the server gates with a follower Coordinator; the owner runs the phases
                in a third process (bench/_owner.py) and the completion reaches the
                server over pub/sub
  lost          as pubsub, but the completion's messages are dropped (the owner's
                client leaves PUBLISH out of its pipeline, the hash is still written):
                the follower's safety-net re-read of the hash must release them
  poll          the baseline, the seed's approach: each connection polls the phase in
                Redis at 50 ms growing to 1 s (route /poll of the same server)
  same_process  the server is the owner and completes the phase itself

After every trial, while the instance is ready, the same server takes 50 fresh
handshakes at once: the time to the last 101 is what "not serialised" is measured
against. A plain PUBLISH from the owner's process to this one is timed between trials:
the raw pub/sub hop on this machine.

    python -m bench.release_latency [--smoke]
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis

from coordinator.instance.status import MAX_INTERVAL

from ._support import (
    BenchServer,
    Handshake,
    LineProcess,
    RedisServer,
    Report,
    http_json,
    ms,
    open_handshakes,
    pct,
    run_benchmark,
)

INSTANCE = "bench-release"
READY_PHASE = "services"
NAMESPACE = "bench-release"
HOP_CHANNEL = f"{NAMESPACE}:raw-hop"
HOPS_PER_TRIAL = 2
ANSWER_TIMEOUT = 10.0


class Trials:
    def __init__(self, clients: int, wait: tuple[float, float],
                 short_wait: tuple[float, float]) -> None:
        self.clients = clients
        self.long_wait = wait  # polling's delay depends on it, and so does the backstop's
        self.short_wait = short_wait  # the gate's release does not: more trials, same time
        self.delays: dict[str, list[list[float]]] = {}  # mode -> per trial, per client
        self.fresh: dict[str, list[float]] = {}  # server -> time to the last of N fresh 101s
        self.seen: dict[str, list[float]] = {}  # mode -> when the gating process saw ready
        self.hops: list[float] = []  # raw PUBLISH from the owner process to this one

    def wait(self, mode: str) -> float:
        return random.uniform(*(self.long_wait if mode in ("poll", "lost") else
                                self.short_wait))

    async def record(self, mode: str, server: BenchServer, completed_at: float,
                     answers: Sequence[tuple[int, float]]) -> None:
        bad = [status for status, _ in answers if status != 101]
        if bad:
            raise RuntimeError(f"{mode}: {len(bad)} handshake(s) answered {bad[:5]}, not 101")
        self.delays.setdefault(mode, []).append(sorted(at - completed_at for _, at in answers))
        if mode != "poll":
            status = await server.until("the gate to be ready", lambda s: s["state"] == "ready")
            self.seen.setdefault(mode, []).append(status["ready_seen_at"] - completed_at)

    async def raw_hop(self, owner: LineProcess, subscriber: Any) -> None:
        """One plain PUBLISH from the owner's process, timed where this process reads it."""
        await owner.ask(f"hop {HOP_CHANNEL}")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            message = await subscriber.get_message(timeout=1)
            if message is not None and message["type"] == "message":
                self.hops.append(time.time() - float(message["data"]))
                return
        raise RuntimeError("the raw pub/sub hop never arrived")

    async def answers(self, handshakes: list[Handshake]) -> list[tuple[int, float]]:
        try:
            return list(await asyncio.wait_for(
                asyncio.gather(*(h.answered for h in handshakes)), ANSWER_TIMEOUT))
        finally:
            for h in handshakes:
                h.close()

    async def fresh_handshakes(self, server: BenchServer, name: str) -> None:
        started = time.time()
        handshakes = await open_handshakes(server.port, "/gated", self.clients)
        answers = await self.answers(handshakes)
        if any(status != 101 for status, _ in answers):
            raise RuntimeError(f"fresh handshakes on a ready {name} server were refused")
        self.fresh.setdefault(name, []).append(max(at for _, at in answers) - started)


async def owner_trial(trials: Trials, server: BenchServer, owner: LineProcess,
                      subscriber: Any, mode: str) -> None:
    """One trial whose owner is another process: modes pubsub, lost and poll."""
    for _ in range(HOPS_PER_TRIAL):
        await trials.raw_hop(owner, subscriber)
    await owner.ask("start")
    try:
        await server.until("the follower to reach the ready phase",
                           lambda s: s["state"] == "starting" and s["phase"] == READY_PHASE)
        path, counter = ("/poll", "polling") if mode == "poll" else ("/gated", "held")
        handshakes = await open_handshakes(server.port, path, trials.clients)
        await server.until(f"{trials.clients} {counter}", lambda s: s[counter] == trials.clients)
        await asyncio.sleep(trials.wait(mode))
        answer = await owner.ask("complete lost" if mode == "lost" else "complete")
        completed_at = float(answer.split()[1])
        await trials.record(mode, server, completed_at, await trials.answers(handshakes))
        await trials.fresh_handshakes(server, "follower")
    finally:
        await owner.ask("stop")


async def same_process_trial(trials: Trials, server: BenchServer, first: bool) -> None:
    if not first:
        await _post(server, "/bench/restart")
    await server.until("the owner to reach the ready phase",
                       lambda s: s["state"] == "starting" and s["phase"] == READY_PHASE)
    handshakes = await open_handshakes(server.port, "/gated", trials.clients)
    await server.until(f"{trials.clients} held", lambda s: s["held"] == trials.clients)
    await asyncio.sleep(trials.wait("same_process"))
    completed_at = (await _post(server, "/bench/complete"))["completed_at"]
    await trials.record("same_process", server, completed_at, await trials.answers(handshakes))
    await trials.fresh_handshakes(server, "owner")


async def _post(server: BenchServer, path: str) -> Any:
    return await http_json(server.port, "POST", path)


def summarise(report: Report, trials: Trials) -> None:
    first = {m: [d[0] for d in per] for m, per in trials.delays.items()}
    last = {m: [d[-1] for d in per] for m, per in trials.delays.items()}
    every = {m: [x for d in per for x in d] for m, per in trials.delays.items()}
    counts = ", ".join(f"{m} {len(per)}" for m, per in trials.delays.items())
    report.figure("setup", f"trials: {counts}; {trials.clients} held handshakes each; the "
                           "completion comes {}-{} s after the last was held ({}-{} s for "
                           "pubsub and same_process); times from the completion to each 101"
                  .format(*trials.long_wait, *trials.short_wait))
    for mode in ("pubsub", "same_process", "lost", "poll"):
        report.figure(f"{mode:12} first 101", _dist(first[mode]))
        report.figure(f"{mode:12} last 101 ", _dist(last[mode]))
        report.figure(f"{mode:12} every 101", _dist(every[mode]))
    report.figure("raw pub/sub hop, owner process -> Redis -> another process",
                  _dist(trials.hops))
    for mode, seen in trials.seen.items():
        report.figure(f"{mode:12} the gating process saw ready", _dist(seen))
        gate = [d[0] - s for d, s in zip(trials.delays[mode], seen, strict=True)]
        report.figure(f"{mode:12} from then to the first 101", _dist(gate))
    for name, times in trials.fresh.items():
        report.figure(f"{trials.clients} fresh handshakes, {name} server", _dist(times))
    for mode in ("pubsub", "same_process"):
        report.ratio(f"{mode}.first_101_p99_ms", pct(first[mode], 99) * 1000, "<=", 2.0,
                     "p99 of the first held client's 101 after the completion, in ms")
    for mode, server in (("pubsub", "follower"), ("same_process", "owner")):
        report.ratio(f"{mode}.last_of_{trials.clients}_vs_fresh",
                     pct(last[mode], 50) / pct(trials.fresh[server], 50), "<=", 1.1,
                     f"median last 101 {ms(pct(last[mode], 50))} vs {trials.clients} fresh "
                     f"handshakes {ms(pct(trials.fresh[server], 50))}")
    polling = pct(every["poll"], 99)
    for mode in ("pubsub", "same_process"):
        report.ratio(f"{mode}.p99_speedup_vs_polling", polling / pct(every[mode], 99), ">=",
                     20.0, f"p99 of every 101: polling {ms(polling)} vs "
                           f"{ms(pct(every[mode], 99))}")
    worst = max(every["lost"])
    report.ratio("lost.max_delay_vs_backstop_bound", worst / MAX_INTERVAL, "<=", 1.05,
                 f"message lost: slowest 101 {ms(worst)}; bound: one re-read interval, at "
                 f"most {ms(MAX_INTERVAL)}, plus 5% for the read and the release")


def _dist(values: list[float]) -> str:
    return (f"p50 {ms(pct(values, 50))}  p99 {ms(pct(values, 99))}  max {ms(max(values))}"
            f"  (n={len(values)})")


async def bench(report: Report, redis_server: RedisServer) -> None:
    smoke = report.smoke
    rounds, fast, clients = (2, 1, 5) if smoke else (20, 5, 50)
    trials = Trials(clients, (0.05, 0.1) if smoke else (0.25, 1.25),
                    (0.02, 0.05) if smoke else (0.05, 0.15))
    base = {"COORD_REDIS_URL": redis_server.url, "COORD_NAMESPACE": NAMESPACE,
            "COORD_INSTANCE_ID": INSTANCE, "COORD_MAX_QUEUE": str(clients * 2)}
    with BenchServer({**base, "BENCH_ROLE": "follower"}, "release-follower") as server:
        subscriber = redis.Redis.from_url(redis_server.url).pubsub()
        await subscriber.subscribe(HOP_CHANNEL)
        try:
            async with LineProcess("bench._owner",
                                   env={**base, "COORD_ENVIRONMENT": "test"}) as owner:
                for _ in range(rounds):
                    for mode in ("pubsub",) * fast + ("lost", "poll"):
                        await owner_trial(trials, server, owner, subscriber, mode)
        finally:
            await subscriber.aclose()
    with BenchServer({**base, "BENCH_ROLE": "owner", "BENCH_START": "hold"},
                     "release-owner") as server:
        for i in range(rounds * fast):
            await same_process_trial(trials, server, first=i == 0)
    summarise(report, trials)


def main(argv: list[str] | None = None) -> int:
    return run_benchmark("release_latency", __doc__, bench, argv)


if __name__ == "__main__":
    sys.exit(main())
