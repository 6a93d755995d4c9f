"""A follower Coordinator in a process of its own, for test_ready_signal.py.

Run as ``python -m tests.integration._follower`` from the project root. It reads COORD_*
like any process, waits for its instance to be ready and reports on stdout, one JSON
object per line: each coordinator notice ("redis", "state", "drop"), then "waiting" once
its waiter is registered, and finally "released" or "not_released", each with its view
(``hash_reads``: how many times it has read the instance hash so far).
FOLLOWER_POLL=off switches the safety-net re-read of the hash off, so that a release can
only come over pub/sub (or from the read that follows a re-subscribe). FOLLOWER_WAIT
bounds the wait, in seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from coordinator.fleet import registry
from coordinator.instance.coordinator import Coordinator
from coordinator.settings import Settings

hash_reads = 0
_read_record = registry.read_record


async def counted_read_record(*args: Any, **kwargs: Any) -> dict[str, str]:
    global hash_reads
    hash_reads += 1
    return await _read_record(*args, **kwargs)


registry.read_record = counted_read_record  # the follower reads through the module


def report(what: str, coord: Coordinator) -> None:
    print(json.dumps({"what": str(what), "state": coord.state.value, "phase": coord.current_phase,
                      "redis_ok": coord.redis_ok, "redis_errors": coord.redis_errors,
                      "drops": dict(coord.drops.counts), "hash_reads": hash_reads,
                      "t": time.time()}), flush=True)


async def main() -> int:
    coord = Coordinator(Settings.from_env(), role="follower")
    if os.environ.get("FOLLOWER_POLL") == "off":
        coord._role.wanted = lambda: None  # type: ignore[method-assign]
    coord.listeners.append(report)
    async with coord:
        waiter = asyncio.create_task(coord.wait_ready(float(os.environ.get("FOLLOWER_WAIT",
                                                                           "20"))))
        await asyncio.sleep(0)  # the waiter is registered (and the poll started) now
        report("waiting", coord)
        released = await waiter
        report("released" if released else "not_released", coord)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
