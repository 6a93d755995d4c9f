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
import json
import sys
from collections import Counter

import redis.asyncio as redis

from ._support import ROOT, RedisServer, Report, command_calls, commands_delta, parse_args

KEY = "bench-leases:leases"
PROCESSES = 4
CONCURRENCY = 8
CAP_PER_LOOP = 10  # releases are flushed in batches, so a cap of one per loop would refuse


class Worker:
    def __init__(self, url: str, index: int, cap: int) -> None:
        self.args = [url, KEY, f"bench-{index}", str(cap), str(CONCURRENCY)]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench._lease_worker", *self.args, cwd=ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        await self._line("ready")

    async def _line(self, expect: str | None = None) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), 60)).decode().strip()
        if not line or (expect is not None and line != expect):
            raise RuntimeError(f"lease worker said {line!r}, expected {expect or 'a result'}")
        return line

    def go(self, mode: str, seconds: float) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"{mode} {seconds}\n".encode())

    async def result(self) -> dict[str, float]:
        return json.loads(await self._line())

    async def stop(self) -> None:
        if self.proc is None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def measure(report: Report, url: str, rounds: int, seconds: float) -> None:
    cap = CAP_PER_LOOP * PROCESSES * CONCURRENCY
    workers = [Worker(url, i, cap) for i in range(PROCESSES)]
    observer = redis.Redis.from_url(url)
    totals: dict[str, Counter[str]] = {"leases": Counter(), "raw": Counter()}
    elapsed: dict[str, float] = {"leases": 0.0, "raw": 0.0}
    server: dict[str, dict[str, int]] = {}
    try:
        await asyncio.gather(*(w.start() for w in workers))
        for i in range(rounds):
            for mode in (("raw", "leases") if i % 2 == 0 else ("leases", "raw")):
                before = await command_calls(observer)
                for w in workers:
                    w.go(mode, seconds)
                results = await asyncio.gather(*(w.result() for w in workers))
                delta = commands_delta(before, await command_calls(observer))
                for name, n in delta.items():
                    server.setdefault(mode, {})[name] = server.get(mode, {}).get(name, 0) + n
                elapsed[mode] += max(r["seconds"] for r in results)
                for r in results:
                    totals[mode].update({k: int(v) for k, v in r.items()
                                         if k not in ("mode", "seconds")})
    finally:
        await asyncio.gather(*(w.stop() for w in workers))
        try:
            remaining = await observer.zcard(KEY)
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


async def amain(smoke: bool) -> int:
    report = Report("lease_throughput", smoke)
    rounds, seconds = (2, 0.3) if smoke else (4, 2.0)
    redis_server = RedisServer().start()
    try:
        await measure(report, redis_server.url, rounds, seconds)
    finally:
        redis_server.kill()
    return report.done()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    return asyncio.run(amain(args.smoke))


if __name__ == "__main__":
    sys.exit(main())
