"""Benchmark 7, rolling deploy: three instances of the reference backend behind HAProxy
(deploy/haproxy.cfg), a thousand clients that stay connected with the client helper
(``coordinator.client.sessions``), and each instance restarted in turn, with pacing off
and on in the same run.

- **off**: ``COORD_DRAIN_SPREAD=0`` and ``COORD_SLOWSTART=0``, what the project did before
  issue 12 (every open connection closed with 1012 at the end of the grace, at once). The
  spread of retry hints cannot be turned off: it is on in every scenario.
- **on**: the drain's 1012s spread over the last ``COORD_DRAIN_SPREAD`` seconds of the
  grace, at its default (half the grace).
- **on+slowstart**: the same, and ``COORD_SLOWSTART`` on the restarted instances.
- **wide** (only when named): the drain's spread at three quarters of the grace.

Everything is measured from the client side: every handshake's outcome and when it
ended, the instance that answered (its welcome frame), every close, and when each client
chatted again (its text echoed). A restart: SIGTERM, the process's exit, a new one on
the same port (a new instance id, as a new pod would have), ready, and HAProxy has it
back up; the next restart starts then.

    python -m bench.rolling_deploy [--smoke] [--clients N] [--scenarios off,on,...]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.rolling import Population, Restart, RollingFleet, Visit

from ._support import RedisServer, Report, pct

BUCKET = 0.1  # seconds: "new handshakes per 100 ms"


@dataclass(frozen=True)
class Plan:
    clients: int
    connect_rate: float  # clients started per second before the deploy
    services: float  # the ready phase's duration, seconds
    grace: float  # COORD_DRAIN_GRACE
    slowstart: float  # COORD_SLOWSTART in the on+slowstart scenario

    @property
    def spread(self) -> float:
        """COORD_DRAIN_SPREAD's default: half the grace."""
        return self.grace / 2


FULL = Plan(clients=1000, connect_rate=200, services=2.0, grace=4.0, slowstart=10.0)
SMOKE = Plan(clients=12, connect_rate=50, services=0.2, grace=1.0, slowstart=1.0)


@dataclass(frozen=True)
class Scenario:
    name: str
    env: dict[str, str]

    def spread(self, plan: Plan) -> float:
        return float(self.env.get("COORD_DRAIN_SPREAD", plan.spread))


def scenarios(plan: Plan) -> dict[str, Scenario]:
    return {s.name: s for s in (
        Scenario("off", {"COORD_DRAIN_SPREAD": "0", "COORD_SLOWSTART": "0"}),
        Scenario("on", {"COORD_SLOWSTART": "0"}),
        Scenario("on+slowstart", {"COORD_SLOWSTART": f"{plan.slowstart:g}"}),
        # Not run by default: the drain spread past its default, three quarters of the grace.
        Scenario("wide", {"COORD_DRAIN_SPREAD": f"{plan.grace * 0.75:g}",
                          "COORD_SLOWSTART": "0"}),
    )}


@dataclass
class Run:
    """One scenario's deploy, as the clients saw it."""

    scenario: Scenario
    plan: Plan
    population: Population
    restarts: list[Restart]
    began: float  # the first SIGTERM (time.monotonic())
    ended: float  # every client chatting again after the last restart
    finished: int  # clients that chatted once more at the very end
    proxy_stats: dict[str, str] = field(default_factory=dict)
    rejected_new: dict[str, dict[str, int]] = field(default_factory=dict)  # restarted ones
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before, after

    # -- the figures --

    def reconnects(self) -> list[Visit]:
        return [v for v in self.population.visits() if v.after is not None]

    def count(self, outcome: str) -> int:
        return self.population.outcomes().get(outcome, 0)

    def closes_1011(self) -> int:
        return self.population.close_codes().get(1011, 0) + self.count("close 1011")

    def http_500(self) -> int:
        return self.count("http 500")

    def never_served(self) -> int:
        return len(self.population.clients) - self.finished

    def buckets(self, since: float, until: float) -> Counter[tuple[str, int]]:
        """Successful handshakes per (instance, 100 ms) between two moments."""
        out: Counter[tuple[str, int]] = Counter()
        for visit in self.population.visits():
            at = visit.connected_at
            if at is not None and visit.instance and since <= at <= until:
                out[(visit.instance, math.floor((at - self.began) / BUCKET))] += 1
        return out

    def peaks(self, since: float | None = None,
              until: float | None = None) -> tuple[int, str, float, int]:
        """(peak at one instance, that instance, when (s after the first SIGTERM), peak of
        the whole fleet) in 100 ms buckets."""
        counts = self.buckets(self.began if since is None else since,
                              self.ended if until is None else until)
        if not counts:
            return 0, "-", 0.0, 0
        (instance, bucket), peak = max(counts.items(), key=lambda kv: kv[1])
        fleet: Counter[int] = Counter()
        for (_, b), n in counts.items():
            fleet[b] += n
        return peak, instance, bucket * BUCKET, max(fleet.values())

    def busiest_second(self) -> tuple[int, int]:
        """(at one instance, at the whole fleet) the most successful handshakes in any ten
        consecutive 100 ms buckets during the deploy: the wave's height without the
        100 ms noise of two shared cores."""
        counts = self.buckets(self.began, self.ended)
        per: dict[str, Counter[int]] = defaultdict(Counter)
        fleet: Counter[int] = Counter()
        for (instance, bucket), n in counts.items():
            per[instance][bucket] += n
            fleet[bucket] += n

        def widest(series: Counter[int]) -> int:
            return max((sum(series[b + k] for k in range(10)) for b in list(series)),
                       default=0)
        return max((widest(s) for s in per.values()), default=0), widest(fleet)

    def offered(self) -> int:
        """The peak of handshakes begun per 100 ms at the whole fleet during the deploy:
        the wave the clients sent, whatever the servers made of it."""
        starts: Counter[int] = Counter()
        for h in self.population.handshakes():
            began = h.ended - h.attempt.duration
            if self.began <= began <= self.ended:
                starts[math.floor((began - self.began) / BUCKET)] += 1
        return max(starts.values(), default=0)

    def rejected_reconnects(self) -> tuple[int, int]:
        """(reconnects whose first handshake was refused, of those served on the next)."""
        refused = [v for v in self.reconnects() if v.handshakes and not
                   v.handshakes[0].connected]
        first_retry = sum(1 for v in refused if len(v.handshakes) >= 2
                          and v.handshakes[1].connected and v.served)
        return len(refused), first_retry

    def back_after(self) -> list[float]:
        """Seconds from each disconnect to chatting again."""
        return [v.chatting_at - v.after.at for v in self.reconnects()
                if v.after is not None and v.chatting_at is not None]

    def handshakes(self) -> int:
        return sum(len(v.handshakes) for v in self.population.visits())

    def reconnect_handshakes(self) -> int:
        return sum(len(v.handshakes) for v in self.reconnects())


# -- running a scenario ----------------------------------------------------------------

async def deploy(scenario: Scenario, plan: Plan, redis_server: RedisServer,
                 report: Report) -> Run:
    logs = Path(tempfile.mkdtemp(prefix=f"bench-rolling-{scenario.name.replace('+', '-')}-"))
    env = {"COORD_DRAIN_GRACE": f"{plan.grace:g}",
           "BACKEND_PHASE_DURATIONS": f"services={plan.services:g}", **scenario.env}
    namespace = f"bench-roll-{scenario.name.replace('+', '-')}-{os.getpid()}"
    fleet = RollingFleet(redis_server.url, namespace, logs, env)
    load_before = os.getloadavg()[0]
    population: Population | None = None
    try:
        await fleet.start()
        slowstart = float(scenario.env.get("COORD_SLOWSTART", 0))
        if slowstart:  # a fleet long up: the clients connect after the window, not in it
            await asyncio.sleep(slowstart)
        population = Population(fleet.url, plan.clients)
        await population.connect(plan.connect_rate, timeout=60 + plan.clients / 20)
        report.note(f"[{scenario.name}] {plan.clients} clients chatting through HAProxy; "
                    "restarting each instance in turn")
        began = time.monotonic()
        restarts = [await fleet.restart(i) for i in range(fleet.size)]
        await population.all_chatting(60 + plan.clients / 20,
                                      "every client to chat again after the deploy")
        ended = time.monotonic()
        assert fleet.proxy is not None
        stats = fleet.proxy.stats().get("BACKEND", {})
        rejected = {fleet.instance_id(i): await fleet.rejected(b)
                    for i, b in enumerate(fleet.backends)}
        finished = await population.finish(30)
        return Run(scenario, plan, population, restarts, began, ended, finished,
                   proxy_stats=stats, rejected_new=rejected,
                   load=(load_before, os.getloadavg()[0]))
    except BaseException:
        report.note(f"[{scenario.name}] failed; logs in {logs}\n{fleet.logs_of()}")
        raise
    finally:
        if population is not None:
            await population.stop()
        await asyncio.to_thread(fleet.stop)


# -- the report ------------------------------------------------------------------------

def describe(report: Report, run: Run) -> None:
    name, plan = run.scenario.name, run.plan
    pop = run.population
    report.figure(f"{name}: setup",
                  f"{plan.clients} clients, 3 instances (services {plan.services:g} s), "
                  f"COORD_DRAIN_GRACE={plan.grace:g}, "
                  + ", ".join(f"{k}={v}" for k, v in run.scenario.env.items())
                  + f"; load average {run.load[0]:.2f} before, {run.load[1]:.2f} after")
    for r in run.restarts:
        report.figure(f"{name}: restart {r.index + 1}",
                      f"SIGTERM at +{r.sigterm - run.began:.1f} s; HAProxy down "
                      f"{r.down - r.sigterm:.2f} s later, exit (status {r.exit_code}) "
                      f"{r.exited - r.sigterm:.2f} s, new one listening "
                      f"{r.listening - r.exited:.2f} s after that, ready "
                      f"{r.ready - r.listening:.2f} s later, HAProxy up "
                      f"{r.up - r.ready:.2f} s later")
    by_drain: dict[str, list[float]] = defaultdict(list)
    for close in pop.closes():
        by_drain[close.instance or "?"].append(close.at)
    for instance, closes in sorted(by_drain.items()):
        report.figure(f"{name}: closes from {instance}",
                      f"{len(closes)}, over {1000 * (max(closes) - min(closes)):.0f} ms")
    report.figure(f"{name}: close codes seen by clients", str(dict(pop.close_codes())))
    hints = Counter((c.reason_json or {}).get("retry_after") for c in pop.closes())
    report.figure(f"{name}: retry hints in the closes (s)", str(dict(sorted(hints.items(),
                                                                          key=str))))
    report.figure(f"{name}: handshakes", f"{run.handshakes()} ({dict(pop.outcomes())}); "
                  f"HAProxy retried {run.proxy_stats.get('wretr', '?')} and redispatched "
                  f"{run.proxy_stats.get('wredis', '?')} itself (retry-on 503)")
    draining = Counter[str]()
    for r in run.restarts:
        draining.update(r.rejected_at_down)
    report.figure(f"{name}: rejected by the instances themselves",
                  f"drained ones, until HAProxy took them out: {dict(draining)}; restarted "
                  f"ones: {run.rejected_new}")
    moves = Counter(len(c.closes) for c in pop.clients)
    report.figure(f"{name}: reconnects", f"{len(run.reconnects())}; clients by how many times "
                  f"they were moved: {dict(sorted(moves.items()))}")
    for i, r in enumerate(run.restarts):
        until = run.restarts[i + 1].sigterm if i + 1 < len(run.restarts) else run.ended
        peak, instance, at, fleet_peak = run.peaks(r.sigterm, until)
        report.figure(f"{name}: drain {i + 1} peak",
                      f"{peak} new handshakes in 100 ms at {instance} (+{at:.1f} s), "
                      f"{fleet_peak} at the whole fleet")
    back = run.back_after()
    report.figure(f"{name}: disconnect to chatting again",
                  f"p50 {pct(back, 50):.2f} s, p99 {pct(back, 99):.2f} s, "
                  f"max {max(back, default=math.nan):.2f} s (n={len(back)})")
    second, fleet_second = run.busiest_second()
    report.figure(f"{name}: deploy peak", f"{run.offered()} handshakes begun in 100 ms by "
                  f"the clients (the whole fleet); busiest second: {second} new handshakes "
                  f"at one instance, {fleet_second} at the whole fleet")
    refused, first = run.rejected_reconnects()
    report.figure(f"{name}: reconnects refused at first", f"{refused}, of which served on the "
                  f"first retry {first}")
    refused_at_all = [v for v in pop.visits() if v.handshakes and not v.handshakes[0].connected]
    on_retry = sum(1 for v in refused_at_all
                   if len(v.handshakes) >= 2 and v.handshakes[1].connected)
    report.figure(f"{name}: connections (first ones included) refused at first",
                  f"{len(refused_at_all)} ({len([v for v in refused_at_all if v.after])} "
                  f"during the deploy), of which served on the first retry {on_retry}")


def compare(report: Report, runs: dict[str, Run]) -> None:
    """The goals: 1011, 500 and clients never served again in every scenario; the others
    are the pacing's, so "off" (the baseline) is printed against no goal."""
    for name, run in runs.items():
        paced = name != "off"
        n = len(run.population.clients)
        report.ratio(f"{name}.close_1011", run.closes_1011(), "<=", 0,
                     f"close code 1011 seen by {n} clients, in handshakes and open "
                     "connections")
        report.ratio(f"{name}.http_500", run.http_500(), "<=", 0,
                     "HTTP 500 answers to the clients' handshakes")
        report.ratio(f"{name}.never_served_again", run.never_served(), "<=", 0,
                     f"clients that did not chat at the end, of {n}")
        refused, first = run.rejected_reconnects()
        reconnects = len(run.reconnects())
        if refused:
            report.ratio(f"{name}.served_on_first_retry", first / refused, ">=",
                         0.9 if paced else None, f"{first} of {refused} reconnects whose "
                         "first handshake was refused were served on the next")
        else:
            report.ratio(f"{name}.served_on_first_retry", math.nan, ">=", None,
                         f"none of {reconnects} reconnects was refused: nothing to measure")
        back = run.back_after()
        spread = run.scenario.spread(run.plan)
        report.ratio(f"{name}.disconnect_to_chat_p99_s", pct(back, 99), "<=",
                     spread + 2 if paced else None,
                     f"p99 of {len(back)} reconnects, seconds from the 1012 to the echo; "
                     f"goal: the drain spread ({spread:g} s) + 2 s")
        report.ratio(f"{name}.handshakes_per_reconnect",
                     run.reconnect_handshakes() / max(1, reconnects), "<=",
                     1.5 if paced else None,
                     f"{run.reconnect_handshakes()} handshakes for {reconnects} reconnects")
        report.ratio(f"{name}.handshakes_per_client_in_deploy",
                     run.reconnect_handshakes() / n, "<=", 1.5 if paced else None,
                     f"{run.reconnect_handshakes()} handshakes during the deploy for {n} "
                     f"clients; {reconnects / n:.2f} reconnects per client (floor: 4/3, "
                     "see BENCHMARKS.md)")
        report.ratio(f"{name}.handshakes_per_client", run.handshakes() / n, "<=", None,
                     f"{run.handshakes()} handshakes for {n} clients, the first connection "
                     "included (floor: 2, every client is moved at least once)")
    if "off" not in runs:
        return
    off_peak, off_instance, _, off_fleet = runs["off"].peaks()
    for name, run in runs.items():
        if name == "off":
            continue
        peak, instance, _, fleet_peak = run.peaks()
        report.ratio(f"{name}.peak_handshakes_per_100ms_vs_off", peak / max(1, off_peak), "<=",
                     0.25, f"busiest instance: {peak} new handshakes in 100 ms ({instance}) "
                     f"vs {off_peak} with pacing off ({off_instance})")
        report.ratio(f"{name}.fleet_peak_per_100ms_vs_off", fleet_peak / max(1, off_fleet), "<=",
                     0.25, f"the whole fleet: {fleet_peak} vs {off_fleet} with pacing off")
        second, _ = run.busiest_second()
        off_second, _ = runs["off"].busiest_second()
        report.ratio(f"{name}.busiest_second_vs_off", second / max(1, off_second), "<=", None,
                     f"busiest instance, most new handshakes in one second: {second} vs "
                     f"{off_second} with pacing off")
        offered, off_offered = run.offered(), runs["off"].offered()
        report.ratio(f"{name}.offered_peak_per_100ms_vs_off", offered / max(1, off_offered),
                     "<=", None, f"handshakes begun by the clients, the whole fleet: {offered} "
                     f"vs {off_offered} with pacing off")


# -- main ------------------------------------------------------------------------------

async def bench(report: Report, redis_server: RedisServer, plan: Plan,
                names: Sequence[str]) -> None:
    known = scenarios(plan)
    runs: dict[str, Run] = {}
    for name in names:
        runs[name] = await deploy(known[name], plan, redis_server, report)
        describe(report, runs[name])
    compare(report, runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", "--tiny", dest="smoke", action="store_true",
                        help="run very small: checks that it works, measures nothing useful")
    parser.add_argument("--clients", type=int, help=f"clients (default {FULL.clients})")
    parser.add_argument("--scenarios", default=None,
                        help="comma-separated, of off, on, on+slowstart, wide (default: "
                             "off,on,on+slowstart; with --smoke: off,on)")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    if args.clients:
        plan = Plan(args.clients, plan.connect_rate, plan.services, plan.grace, plan.slowstart)
    names = (args.scenarios or ("off,on" if args.smoke else "off,on,on+slowstart")).split(",")
    unknown = set(names) - set(scenarios(plan))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}")
    report = Report("rolling_deploy", args.smoke)
    redis_server = RedisServer().start()
    try:
        asyncio.run(bench(report, redis_server, plan, names))
    finally:
        redis_server.kill()
    return report.done()


if __name__ == "__main__":
    sys.exit(main())
