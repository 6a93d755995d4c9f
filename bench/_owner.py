"""An instance's startup, run in a process of its own for the release-latency benchmark,
so that neither the gating server nor the timed clients share its event loop.

One line per command on stdin, one line per answer on stdout:
  start           a new incarnation (same instance id) runs its phases up to the ready
                  phase and stays inside it; answers "started"
  start PARSER NAMESPACE
                  the same, in NAMESPACE, on a client whose reply parser is PARSER
                  (hiredis or python, bench/_support.py's PARSERS), for bench/parser.py
  complete        completes the ready phase; answers "completed <unix time>"
  complete lost   the same, but the owner's client leaves PUBLISH out of its pipelines
                  until the next stop: the hash says ready, the message is lost
  stop            stops the incarnation; answers "stopped"
  hop <channel>   publishes this process's clock on <channel> with a plain PUBLISH (the
                  raw pub/sub hop the benchmark compares with); answers "published"
Settings come from the COORD_* variables.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from typing import Any, cast

import redis.asyncio as redis

from coordinator import Coordinator, Settings

from ._support import use_parser


class LossyRedis(redis.Redis):
    """A client whose pipelines leave PUBLISH out while ``lose`` is set: the message is
    lost, the hash written in the same pipeline is not."""

    lose = False

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        if self.lose:
            pipe.publish = lambda *args, **kwargs: pipe  # type: ignore[method-assign]
        return pipe


class Life:
    def __init__(self, settings: Settings, client: LossyRedis) -> None:
        self.owner = Coordinator(settings, role="owner", client=client)
        self.client = client
        self.inside = asyncio.Event()
        self.release = asyncio.Event()
        self.lose = False
        self.completed_at: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        owner = self.owner
        await owner.start()
        plan = owner.plan
        for name in plan.phases[:plan.ready_index - 1]:
            async with owner.phase(name):
                pass
        async with owner.phase(plan.ready_phase):
            self.inside.set()
            await self.release.wait()
            self.client.lose = self.lose
            at = time.time()
        self.completed_at.set_result(at)

    async def stop(self) -> None:
        self.client.lose = False
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.owner.stop()


async def serve() -> None:
    settings = Settings.from_env()
    client = cast(LossyRedis, LossyRedis.from_url(settings.redis_url))  # typed as Redis
    by_parser: dict[str, LossyRedis] = {}  # "start PARSER NAMESPACE": one client per parser
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    life: Life | None = None

    def answer(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    try:
        while line := (await reader.readline()).decode().strip():
            command, _, arg = line.partition(" ")
            if command == "start":
                parser, _, namespace = arg.partition(" ")
                if parser:
                    if parser not in by_parser:
                        by_parser[parser] = cast(LossyRedis, use_parser(
                            LossyRedis.from_url(settings.redis_url), parser))
                    life = Life(dataclasses.replace(settings, namespace=namespace),
                                by_parser[parser])
                else:
                    life = Life(settings, client)
                await life.inside.wait()
                answer("started")
            elif command == "complete" and life is not None:
                life.lose = arg == "lost"
                life.release.set()
                answer(f"completed {await life.completed_at!r}")
            elif command == "hop" and arg:
                await client.publish(arg, repr(time.time()))
                answer("published")
            elif command == "stop" and life is not None:
                await life.stop()
                life = None
                answer("stopped")
            else:
                answer(f"error: unknown command {line!r}")
    finally:
        if life is not None:
            await life.stop()
        for other in (client, *by_parser.values()):
            await other.aclose()


if __name__ == "__main__":
    asyncio.run(serve())
