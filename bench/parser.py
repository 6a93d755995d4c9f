"""Benchmark 8, the reply parser: hiredis against redis-py's pure-Python parser, both in
one process, rounds alternating, on the two goals still missed (sections 2 and 4).

redis-py picks its parser at import (hiredis when installed); here every client is given
one explicitly (``parser_class``, bench/_support.py's ``use_parser``), so both arms run
in the same processes, in alternate rounds (ABBA), and each metric is printed for both
with the ratio hiredis / pure Python.

  fleet      ``FleetReader.snapshot`` of 1,000 registered instances (synthetic records
             as in bench/fleet_scale.py), by its script path (each page one JSON text)
             and by its fallback (a pipeline of HGETALL per page); next to each, the
             same reads with nothing decoded; for the script path, where the rest goes
             (json.loads, decoding the records, the views and totals, Redis's own time)
  release    as bench/release_latency.py's pubsub mode: handshakes held on a follower
             server, the owner in a third process completes the ready phase, each 101
             timed from the completion. One follower server and one owner client per
             arm, each in a namespace of its own. The follower's subscription parses
             with coordinator._redis.pubsub's pure-Python parser in both arms, by design: hiredis
             reaches only the owner's write and publish (one MULTI..EXEC) and the
             follower's other reads (the safety-net re-read of the hash)
  owner      that write and publish (``write_record`` with an event) alone,
             timed here per parser
  hop        a plain PUBLISH from the owner's process, read here by a subscription whose
             parser is hiredis or coordinator._redis.pubsub's: what hiredis would save on the
             subscription were it allowed there

    python -m bench.parser [--smoke]
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as redis

from coordinator import Coordinator, Settings
from coordinator._redis.pubsub import bounded_pubsub
from coordinator.contract.keys import Keys
from coordinator.contract.record import as_text, decode_fields
from coordinator.fleet.registry import write_record
from coordinator.fleet.view import (
    MAX_RECORD_BYTES,
    READ_PAGE,
    FleetReader,
    _flat_text,
    _view,
    fleet_totals,
)

from ._support import (
    BenchServer,
    LineProcess,
    RedisServer,
    Report,
    ms,
    open_handshakes,
    parser_in_use,
    pct,
    run_benchmark,
    use_parser,
)
from .fleet_scale import fill, raw_pages
from .release_latency import READY_PHASE, Trials

ARMS = ("hiredis", "python")
NAMESPACE = "bench-parser"
INSTANCE = "bench-parser"
TTL = 600.0
FLEET_GOAL_MS = 20.0
RELEASE_GOAL_MS = 2.0


def arms(round_no: int) -> tuple[str, ...]:
    """ABBA: each arm goes first in half of the rounds."""
    return ARMS if round_no % 4 in (0, 3) else ARMS[::-1]


def client(url: str, parser: str) -> redis.Redis:
    return use_parser(redis.Redis.from_url(url), parser)


def dist(values: list[float]) -> str:
    return (f"p50 {ms(pct(values, 50))}  p99 {ms(pct(values, 99))}  max {ms(max(values))}"
            f"  (n={len(values)})")


def ratio_line(report: Report, key: str, samples: dict[str, list[float]], q: float,
               what: str) -> None:
    h, p = pct(samples["hiredis"], q), pct(samples["python"], q)
    report.ratio(key, h / p, "<=", None,
                 f"{what}, p{q:g}: hiredis {ms(h)} / pure Python {ms(p)}")


# -- the fleet view -----------------------------------------------------------------

async def script_pages(reader: FleetReader, ids: list[str]) -> list[Any]:
    """The page scripts alone: Redis, the transfer and the reply parser, nothing decoded."""
    pages = []
    for start in range(0, len(ids), reader.page_size):
        chunk = ids[start:start + reader.page_size]
        pages.append(await reader.client.register_script(READ_PAGE)(
            keys=[reader.keys.instance(i) for i in chunk], args=[MAX_RECORD_BYTES]))
    return pages


async def evalsha_usec(observer: redis.Redis) -> float:
    stats = await observer.info("commandstats")
    return float(stats.get("cmdstat_evalsha", {}).get("usec", 0))


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def fleet(report: Report, url: str, size: int, rounds: int) -> None:
    keys = Keys(NAMESPACE + "-fleet")
    clients = {arm: client(url, arm) for arm in ARMS}
    observer = redis.Redis.from_url(url)
    try:
        template = Coordinator(Settings(redis_url=url, namespace=keys.namespace,
                                        instance_ttl=TTL, environment="test")).owner
        assert template is not None
        await fill(observer, keys, template.record(), 0, size)
        readers = {arm: FleetReader(c, keys, prune=False) for arm, c in clients.items()}
        ids = sorted(as_text(m) for m in await observer.zrange(keys.instances, 0, -1))
        # label -> arm -> seconds per snapshot (or per the same reads alone)
        times: dict[str, dict[str, list[float]]] = {}
        redis_usec: list[float] = []
        for arm in ARMS:  # warm-up: scripts loaded, connections open, parser checked
            snapshot = await readers[arm].snapshot()
            if snapshot["totals"]["instances"] != size:
                raise RuntimeError(f"{arm}: saw {snapshot['totals']['instances']} of {size}")
            await raw_pages(clients[arm], keys)
            report.figure(f"fleet {arm:7} client's parser", parser_in_use(clients[arm]))
        for round_no in range(rounds):
            for arm in arms(round_no):
                reader = readers[arm]

                def add(label: str, seconds: float, arm: str = arm) -> None:
                    times.setdefault(label, {}).setdefault(arm, []).append(seconds)

                reader.scripts = True
                before = await evalsha_usec(observer)
                add("script", await timed(reader.snapshot))
                redis_usec.append(await evalsha_usec(observer) - before)
                add("script reads alone", await timed(functools.partial(script_pages, reader, ids)))
                reader.scripts = False
                add("pipeline", await timed(reader.snapshot))
                add("pipeline reads alone",
                    await timed(functools.partial(raw_pages, clients[arm], keys)))
        for label, by_arm in times.items():
            for arm in ARMS:
                report.figure(f"fleet {size} {label:20} {arm:7}", dist(by_arm[arm]))
        await script_breakdown(report, readers["python"], ids, statistics.median(redis_usec))
        for path in ("script", "pipeline"):
            for arm in ARMS:
                p50, p99 = pct(times[path][arm], 50), pct(times[path][arm], 99)
                report.ratio(f"fleet.{path}_p50_ms.{arm}", p50 * 1000, "<=", FLEET_GOAL_MS,
                             f"FleetReader.snapshot of {size} instances, {path} path, {arm} "
                             f"parser: p50 {ms(p50)}, p99 {ms(p99)}, n={len(times[path][arm])}")
            ratio_line(report, f"fleet.{path}.hiredis_vs_python", times[path], 50,
                       f"snapshot of {size}, {path} path")
            ratio_line(report, f"fleet.{path}_reads_alone.hiredis_vs_python",
                       times[f"{path} reads alone"], 50,
                       f"the {path} path's reads of {size} with nothing decoded")
    finally:
        for c in (*clients.values(), observer):
            await c.aclose()


async def script_breakdown(report: Report, reader: FleetReader, ids: list[str],
                           redis_usec: float) -> None:
    """Where a script-path snapshot goes, parser aside: the same work on the same texts."""
    pages = await script_pages(reader, ids)
    sizes = [min(reader.page_size, len(ids) - s) for s in range(0, len(ids), reader.page_size)]
    parts: dict[str, list[float]] = {}
    now = time.time()

    def clock(label: str, started: float) -> None:
        parts.setdefault(label, []).append(time.perf_counter() - started)

    for _ in range(5):
        started = time.perf_counter()
        rows = [json.loads(page) for page in pages]
        clock("json.loads of the pages", started)
        started = time.perf_counter()
        if not all(len(r) == n for r, n in zip(rows, sizes, strict=True)):
            raise RuntimeError("a page of the wrong length")
        if not all(_flat_text(row) for page in rows for row in page):
            raise RuntimeError("a record that is not flat text")
        clock("checking every value is text (decode_page's _flat_text)", started)
        started = time.perf_counter()
        records = [decode_fields(row) for page in rows for row in page]
        clock("decoding the records (decode_fields)", started)
        started = time.perf_counter()
        instances = [_view(i, r, now, now, {}) for i, r in zip(ids, records, strict=True)]
        instances.sort(key=lambda r: str(r["id"]))
        fleet_totals(instances, 0)
        clock("views and totals", started)
    report.figure(f"fleet {len(ids)} script path, parser aside",
                  f"Redis runs the page and index scripts {redis_usec / 1000:.2f} ms "
                  "(INFO commandstats, per snapshot); "
                  + "; ".join(f"{label} {ms(statistics.median(t))}" for label, t in parts.items())
                  + f" (medians of 5, {len(pages)} page(s), "
                    f"{sum(len(p) for p in pages)} bytes of JSON)")


# -- the release --------------------------------------------------------------------

async def owner_writes(clients: dict[str, redis.Redis], record: dict[str, str], n: int,
                       into: dict[str, list[float]], arm: str) -> None:
    """The owner's write and publish: the whole record, its TTL, the index entry and the
    event, one MULTI..EXEC, as the owner sends them at a phase's completion."""
    keys = Keys(f"{NAMESPACE}-owner-{arm}")
    event = json.dumps({"v": 1, "instance": INSTANCE, "event": "phase_completed",
                        "phase": READY_PHASE, "phase_index": 5, "ts": time.time(),
                        "state": "ready"}).encode()
    for _ in range(n):
        started = time.perf_counter()
        await write_record(clients[arm], keys, record, TTL, time.time(), event=event)
        into.setdefault(arm, []).append(time.perf_counter() - started)


async def hop(owner: LineProcess, subscriber: Any, channel: str) -> float:
    await owner.ask(f"hop {channel}")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        message = await subscriber.get_message(timeout=1)
        if message is not None and message["type"] == "message":
            return time.time() - float(message["data"])
    raise RuntimeError(f"the pub/sub hop on {channel} never arrived")


async def release_trial(trials: Trials, server: BenchServer, owner: LineProcess,
                        arm: str) -> None:
    await owner.ask(f"start {arm} {NAMESPACE}-{arm}")
    try:
        await server.until("the follower to reach the ready phase",
                           lambda s: s["state"] == "starting" and s["phase"] == READY_PHASE)
        handshakes = await open_handshakes(server.port, "/gated", trials.clients)
        await server.until(f"{trials.clients} held", lambda s: s["held"] == trials.clients)
        await asyncio.sleep(trials.wait(arm))
        completed_at = float((await owner.ask("complete")).split()[1])
        await trials.record(arm, server, completed_at, await trials.answers(handshakes))
    finally:
        await owner.ask("stop")


async def release(report: Report, url: str, rounds: int, clients: int, writes: int) -> None:
    trials = Trials(clients, (0.05, 0.15), (0.05, 0.15) if not report.smoke else (0.02, 0.05))
    base = {"COORD_REDIS_URL": url, "COORD_INSTANCE_ID": INSTANCE,
            "COORD_MAX_QUEUE": str(clients * 2), "BENCH_ROLE": "follower"}
    servers = {arm: BenchServer({**base, "COORD_NAMESPACE": f"{NAMESPACE}-{arm}",
                                 "BENCH_PARSER": arm}, f"parser-{arm}") for arm in ARMS}
    writers = {arm: client(url, arm) for arm in ARMS}
    subscribers = {"hiredis": client(url, "hiredis").pubsub(ignore_subscribe_messages=True),
                   "python": bounded_pubsub(redis.Redis.from_url(url))}
    owner_s: dict[str, list[float]] = {}
    hops: dict[str, list[float]] = {}
    record = Coordinator(Settings(
        redis_url=url, namespace=NAMESPACE, instance_id=INSTANCE,
        environment="test")).owner.record()  # type: ignore[union-attr]
    try:
        for server in servers.values():
            server.start()
        for arm, subscriber in subscribers.items():
            await subscriber.subscribe(f"{NAMESPACE}:hop-{arm}")
        async with LineProcess("bench._owner", env={**base, "COORD_NAMESPACE": NAMESPACE,
                                                    "COORD_ENVIRONMENT": "test"}) as owner:
            for arm in ARMS:  # warm-up, and the subscriptions' parsers checked
                await owner_writes(writers, record, 2, {}, arm)
                await hop(owner, subscribers[arm], f"{NAMESPACE}:hop-{arm}")
                conn: Any = subscribers[arm].connection
                report.figure(f"release {arm:7} owner-write parser, hop subscriber parser",
                              f"{parser_in_use(writers[arm])}; {type(conn._parser).__name__}")
            for round_no in range(rounds):
                for arm in arms(round_no):
                    for _ in range(2):
                        hops.setdefault(arm, []).append(
                            await hop(owner, subscribers[arm], f"{NAMESPACE}:hop-{arm}"))
                    await owner_writes(writers, record, writes, owner_s, arm)
                    await release_trial(trials, servers[arm], owner, arm)
    finally:
        for subscriber in subscribers.values():
            await subscriber.aclose()
        for writer in writers.values():
            await writer.aclose()
        for server in servers.values():
            server.stop()
    first = {arm: [d[0] for d in trials.delays[arm]] for arm in ARMS}
    last = {arm: [d[-1] for d in trials.delays[arm]] for arm in ARMS}
    report.figure("release setup", f"{rounds} trials per arm, alternating; {clients} held "
                                   f"handshakes each; completion {trials.short_wait[0]}-"
                                   f"{trials.short_wait[1]} s after the last was held")
    for arm in ARMS:
        report.figure(f"release {arm:7} first 101", dist(first[arm]))
        report.figure(f"release {arm:7} last 101 ", dist(last[arm]))
        report.figure(f"release {arm:7} the follower saw ready", dist(trials.seen[arm]))
        gate = [d[0] - s for d, s in zip(trials.delays[arm], trials.seen[arm], strict=True)]
        report.figure(f"release {arm:7} from then to the first 101", dist(gate))
        report.figure(f"owner   {arm:7} write+publish (MULTI..EXEC)", dist(owner_s[arm]))
        report.figure(f"hop     {arm:7} subscriber", dist(hops[arm]))
    for arm in ARMS:
        report.ratio(f"release.first_101_p99_ms.{arm}", pct(first[arm], 99) * 1000, "<=",
                     RELEASE_GOAL_MS, f"p99 of the first held client's 101 after the "
                                      f"completion, {arm} parser (the subscription's is "
                                      f"pure Python in both); p50 {ms(pct(first[arm], 50))}")
    ratio_line(report, "release.first_101_p99.hiredis_vs_python", first, 99, "first 101")
    ratio_line(report, "release.first_101_p50.hiredis_vs_python", first, 50, "first 101")
    ratio_line(report, "release.ready_seen_p50.hiredis_vs_python", trials.seen, 50,
               "the follower saw ready")
    ratio_line(report, "owner.write_publish_p50.hiredis_vs_python", owner_s, 50,
               "the owner's write+publish round trip")
    ratio_line(report, "hop.subscriber_p50.hiredis_vs_python", hops, 50,
               "raw pub/sub hop read by a hiredis or a coordinator._redis.pubsub subscription")


async def bench(report: Report, redis_server: RedisServer) -> None:
    if report.smoke:
        size, fleet_rounds, rounds, clients, writes = 30, 2, 2, 5, 3
    else:
        size, fleet_rounds, rounds, clients, writes = 1000, 16, 60, 50, 20
    load = os.getloadavg()[0]
    await fleet(report, redis_server.url, size, fleet_rounds)
    report.note(f"load average (1 min): {load:.2f} before the fleet view, "
                f"{os.getloadavg()[0]:.2f} after")
    load = os.getloadavg()[0]
    await release(report, redis_server.url, rounds, clients, writes)
    report.note(f"load average (1 min): {load:.2f} before the release, "
                f"{os.getloadavg()[0]:.2f} after")


def main(argv: list[str] | None = None) -> int:
    return run_benchmark("parser", __doc__, bench, argv)


if __name__ == "__main__":
    sys.exit(main())
