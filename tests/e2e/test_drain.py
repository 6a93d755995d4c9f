"""SIGTERM drain, as Cloud Run delivers it (SIGKILL 10 s later): ``draining`` at once, clean
rejections for new and held handshakes through the grace, 1012 for open connections, the
instance gone from Redis (hash, index entry, leases) before the process exits 0."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any, Self

import pytest
import redis.asyncio as redis
from websockets import ConnectionClosed
from websockets.asyncio.client import connect

from coordinator._redis.pubsub import bounded_pubsub
from coordinator.contract.record import as_text
from tests.support import (
    CLOSE,
    HTTP,
    NEAR_READY_DURATIONS,
    BackendProcess,
    Outcome,
    RedisServer,
    async_wait_until,
    backend_env,
    chat,
    equals,
    subscribers,
    wait_for_phase,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

CLOUD_RUN_KILL_AFTER = 10.0  # seconds between SIGTERM and SIGKILL on Cloud Run


class Events:
    """Everything published on N:events, in order, from subscription on."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.pubsub = bounded_pubsub(client)
        self.channel = f"{{{namespace}}}:events"
        self.seen: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.pubsub.follow(self.channel)
        self._task = asyncio.create_task(self._read())
        await async_wait_until(self._subscribed, 5, what="the subscription")
        return self

    async def _subscribed(self) -> bool:
        return await subscribers(self.client, self.channel) > 0

    async def _read(self) -> None:
        # get_message, not listen(): redis-py before 6 reads listen()'s messages with the
        # socket timeout (2 s here) and ends it on the first quiet stretch.
        while True:
            message = await self.pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] in ("message", "smessage"):
                self.seen.append(json.loads(message["data"]))  # not the confirmations

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.pubsub.aclose()

    def events(self, instance: str) -> list[str]:
        return [e["event"] for e in self.seen if e["instance"] == instance]


async def open_chat(url: str) -> tuple[Any, asyncio.Task[int | None]]:
    """An admitted connection left open; the task ends with the server's close code."""
    ws = await connect(url, open_timeout=10)
    assert json.loads(await ws.recv())["type"] == "welcome"

    async def until_closed() -> int | None:
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None

    return ws, asyncio.create_task(until_closed())


async def gone_from_redis(client: redis.Redis, namespace: str, instance: str) -> dict[str, Any]:
    leases = await client.zrange(f"{{{namespace}}}:leases", 0, -1)
    return {"hash": await client.exists(f"{{{namespace}}}:instance:{instance}"),
            "index": await client.zscore(f"{{{namespace}}}:instances", instance),
            "leases": [m for m in map(as_text, leases) if m.startswith(f"{instance}:")]}


def draining_rejection(outcome: Outcome, mode: str) -> None:
    assert outcome.rejection == "draining", outcome
    if mode == "http":
        assert outcome.kind == HTTP and outcome.status == 503, outcome
        assert outcome.retry_after is not None and int(outcome.retry_after) >= 1, outcome
    else:
        assert outcome.kind == CLOSE and outcome.code == 1012, outcome
    assert outcome.reason["retry_after"] >= 1, outcome


def exit_as_cloud_run(backend: BackendProcess) -> int:
    """The exit code, or -9 when it needed Cloud Run's SIGKILL."""
    return backend.wait_exit(timeout=CLOUD_RUN_KILL_AFTER)



@pytest.mark.parametrize("reject", ["http", "close"])
@pytest.mark.matrix
async def test_sigterm_during_traffic_closes_open_rejects_new_and_leaves_redis(
        start_backend: Any, redis_server: RedisServer, namespace: str, redis_text: redis.Redis,
        reject: str) -> None:
    instance = f"{namespace}-i1"
    env = backend_env(namespace=namespace, redis_url=redis_server.url, COORD_REJECT=reject,
                      COORD_FLEET_MAX_QUEUE="10",  # so that leases exist and must go too
                      BACKEND_PHASE_DURATIONS=f"{NEAR_READY_DURATIONS},services=0.1")
    if reject == "close":
        env["COORD_DRAIN_GRACE"] = "4"  # the default (5 s) is exercised by the http case
    backend = start_backend(env)
    backend.wait_ready()
    _status, body = backend.get("/health/ready")
    assert body["drain"] == {"armed": True, "via": "signal.signal"}, body  # uvicorn's
    opened = [await open_chat(backend.ws_url) for _ in range(3)]
    try:
        await drain_during_traffic(backend, redis_text, namespace, instance, reject, opened)
    finally:
        for ws, task in opened:
            task.cancel()
            await ws.close()
    assert "Traceback" not in backend.log()


async def drain_during_traffic(backend: BackendProcess, client: redis.Redis, namespace: str,
                               instance: str, reject: str,
                               opened: list[tuple[Any, asyncio.Task[int | None]]]) -> None:
    async with Events(client, namespace) as events:
        backend.signal(signal.SIGTERM)
        await async_wait_until(lambda: "draining" in events.events(instance), 5,
                               what="draining published")
        # Published at once: the grace has not run out, the open connections are open.
        # Within the grace: still listening, every newcomer turned away cleanly.
        newcomers = await asyncio.gather(*(chat(backend.ws_url) for _ in range(5)))
        for outcome in newcomers:
            draining_rejection(outcome, reject)
        assert backend.proc is not None and backend.proc.poll() is None
        assert backend.get("/health/ready")[0] == 503
        assert not any(task.done() for _, task in opened)  # open ones last the grace

        codes = await asyncio.wait_for(asyncio.gather(*(task for _, task in opened)),
                                       CLOUD_RUN_KILL_AFTER)
        assert codes == [1012, 1012, 1012]
        assert exit_as_cloud_run(backend) == 0
        # The process is gone; what it left in Redis was removed before it went.
        assert await gone_from_redis(client, namespace, instance) == \
            {"hash": 0, "index": None, "leases": []}
        await async_wait_until(lambda: "stopped" in events.events(instance), 5)
        seen = events.events(instance)  # later phases may still complete while draining
        assert seen.index("draining") < seen.index("stopped") == len(seen) - 1, seen


async def test_sigterm_while_starting_rejects_held_handshakes_and_frees_their_leases(
        start_backend: Any, redis_server: RedisServer, namespace: str,
        redis_text: redis.Redis) -> None:
    instance = f"{namespace}-i1"
    env = backend_env(namespace=namespace, redis_url=redis_server.url, COORD_FLEET_MAX_QUEUE="10",
                      COORD_DRAIN_GRACE="1",
                      BACKEND_PHASE_DURATIONS=f"{NEAR_READY_DURATIONS},services=60")
    backend = start_backend(env)
    wait_for_phase(backend, ("cache", "services"))
    held = [asyncio.create_task(chat(backend.ws_url)) for _ in range(4)]

    async def leased() -> int:
        return len((await gone_from_redis(redis_text, namespace, instance))["leases"])

    await async_wait_until(lambda: equals(leased(), 4), 10, what="four held with leases")
    backend.signal(signal.SIGTERM)
    outcomes = await asyncio.wait_for(asyncio.gather(*held), 5)  # at once, not at a timeout
    for outcome in outcomes:
        draining_rejection(outcome, "http")
    assert exit_as_cloud_run(backend) == 0
    assert await gone_from_redis(redis_text, namespace, instance) == \
        {"hash": 0, "index": None, "leases": []}


