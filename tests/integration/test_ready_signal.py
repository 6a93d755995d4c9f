"""The ready signal across processes: a follower Coordinator in a subprocess of its own,
released by a transition made in this process, over a real redis-server."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from redis.typing import EncodableT

from coordinator._redis.client import make_redis
from coordinator.contract.events import MAX_MESSAGE_BYTES
from coordinator.instance.coordinator import Coordinator
from coordinator.settings import DEFAULT_PHASES, Settings
from tests.support import ROOT, RedisServer, async_wait_until, event, publish, subscribers

pytestmark = pytest.mark.redis

INSTANCE = "web-1"
READY_INDEX = DEFAULT_PHASES.index("services") + 1
LINE_TIMEOUT = 15.0


class Follower:
    """The follower subprocess and the JSON lines it reports."""

    def __init__(self, redis_url: str, namespace: str, log: Path, poll: bool = True) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("COORD_")}
        self.env.update(COORD_REDIS_URL=redis_url, COORD_NAMESPACE=namespace,
                        COORD_INSTANCE_ID=INSTANCE, COORD_ENVIRONMENT="test",
                        FOLLOWER_POLL="on" if poll else "off", FOLLOWER_WAIT="30")
        self.log_path = log
        self.lines: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Follower:
        with open(self.log_path, "wb") as stderr:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.integration._follower", cwd=ROOT, env=self.env,
                stdout=asyncio.subprocess.PIPE, stderr=stderr)
        return self

    async def expect(self, what: str, timeout: float = LINE_TIMEOUT,
                     **fields: Any) -> dict[str, Any]:
        """The next line saying ``what`` (with ``fields``); every line is kept."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), max(remaining, 0.01))
            except TimeoutError:
                raise AssertionError(f"no {what!r} line within {timeout}s; got {self.lines}; "
                                     f"stderr: {self.log_path.read_text()}") from None
            if not raw:
                raise AssertionError(f"follower exited before {what!r}; got {self.lines}; "
                                     f"stderr: {self.log_path.read_text()}")
            line = json.loads(raw)
            self.lines.append(line)
            if line["what"] == what and all(line[k] == v for k, v in fields.items()):
                return line

    async def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.communicate()


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Any]:
    followers: list[Follower] = []

    async def start(redis_url: str, namespace: str, poll: bool = True) -> Follower:
        follower = Follower(redis_url, namespace, tmp_path / f"follower-{len(followers)}.log",
                            poll)
        followers.append(follower)
        return await follower.start()

    yield start
    for follower in followers:
        await follower.close()


STARTED_AT = time.time()


def starting_record() -> dict[EncodableT, EncodableT]:
    """An owner's hash, as it stands while it runs the ready phase."""
    return {"id": INSTANCE, "state": "starting", "phase": "services",
            "phase_index": str(READY_INDEX), "phases_total": str(len(DEFAULT_PHASES)),
            "started_at": str(STARTED_AT), "updated_at": str(time.time()),
            "heartbeat_at": str(time.time()), "ttl": "10"}


def ready_message(instance: str = INSTANCE, **extra: Any) -> bytes:
    return event(instance, "phase_completed", "services", READY_INDEX, state="ready",
                 started_at=STARTED_AT, **extra)


async def write_starting(client: redis.Redis, namespace: str) -> None:
    await client.hset(f"{{{namespace}}}:instance:{INSTANCE}", mapping=starting_record())


async def _subscribed(client: redis.Redis, namespace: str) -> bool:
    return await subscribers(client, f"{{{namespace}}}:instance:{INSTANCE}:events") == 1


async def waiting_follower(spawn: Any, connect_redis: Any, url: str, namespace: str,
                           poll: bool = True) -> tuple[redis.Redis, Follower]:
    """A hash that says "starting, in services", and a follower subscribed and waiting."""
    client = connect_redis(url, decode_responses=True)
    await write_starting(client, namespace)
    follower = await spawn(url, namespace, poll=poll)
    await follower.expect("waiting", state="starting", phase="services", redis_ok=True)
    await async_wait_until(lambda: _subscribed(client, namespace), 5, what="subscribed")
    return client, follower


async def test_a_waiter_in_another_process_is_released_over_pubsub(
        redis_server: RedisServer, namespace: str, spawn: Any) -> None:
    owner = Coordinator(Settings(redis_url=redis_server.url, namespace=namespace,
                                 instance_id=INSTANCE, environment="test"))
    await owner.start()
    try:
        for name in DEFAULT_PHASES[:READY_INDEX - 1]:
            async with owner.phase(name):
                pass
        async with owner.phase("services"):
            # No safety-net re-read in the follower: only pub/sub can release it.
            follower = await spawn(redis_server.url, namespace, poll=False)
            waiting = await follower.expect("waiting")
            assert waiting["redis_ok"]
            assert (waiting["state"], waiting["phase"]) == ("starting", "services")
        released = await follower.expect("released")
        assert released["state"] == "ready"
        # Released by the message itself: the follower read the hash when its link came
        # up, before it waited, and never again (no poll, no re-subscribe).
        assert released["hash_reads"] == waiting["hash_reads"] >= 1
        assert released["redis_errors"] == 0
        assert not any(line["what"] == "redis" and not line["redis_ok"]
                       for line in follower.lines)
    finally:
        await owner.stop()


async def test_a_lost_message_is_made_up_for_by_re_reading_the_hash(
        redis_server: RedisServer, namespace: str, spawn: Any, connect_redis: Any) -> None:
    client, follower = await waiting_follower(spawn, connect_redis, redis_server.url, namespace)
    # The transition lands in the hash, but its message never goes out.
    await client.hset(f"{{{namespace}}}:instance:{INSTANCE}", "state", "ready")
    released = await follower.expect("released")
    assert released["state"] == "ready"
    assert released["redis_errors"] == 0  # still subscribed: only a re-read could see it


async def test_release_survives_the_subscriber_being_cut_as_ready_is_published(
        own_redis: RedisServer, namespace: str, spawn: Any, connect_redis: Any) -> None:
    client, follower = await waiting_follower(spawn, connect_redis, own_redis.url, namespace)
    key = f"{{{namespace}}}:instance:{INSTANCE}"
    channel = f"{{{namespace}}}:instance:{INSTANCE}:events"
    async with client.pipeline(transaction=True) as pipe:  # atomic: no re-subscribe between
        pipe.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        pipe.hset(key, "state", "ready")
        pipe.publish(channel, ready_message())
        killed, _, receivers = await pipe.execute()
    assert killed == 1
    assert receivers == 0  # the ready message reached nobody
    released = await follower.expect("released")
    assert released["state"] == "ready"


async def test_bad_messages_are_dropped_counted_and_never_release(
        redis_server: RedisServer, namespace: str, spawn: Any, connect_redis: Any) -> None:
    client, follower = await waiting_follower(spawn, connect_redis, redis_server.url, namespace)
    channel = f"{{{namespace}}}:instance:{INSTANCE}:events"
    unknown_version = json.loads(ready_message())
    unknown_version["v"] = 2
    bad = [
        b"\x00garbage{",  # invalid JSON
        b'["ready"]',  # not an object
        ready_message(instance="web-2"),  # another instance's ready
        ready_message(padding="x" * MAX_MESSAGE_BYTES),  # oversized
        json.dumps(unknown_version).encode(),  # a schema this reader does not know
    ]
    for data in bad:
        assert await publish(client, channel, data) == 1
    expected = {"invalid_json": 1, "invalid_schema": 1, "wrong_instance": 1, "oversized": 1,
                "unknown_version": 1}
    await follower.expect("drop", drops=expected)
    assert all(line["state"] == "starting" for line in follower.lines)
    assert not any(line["what"] in ("state", "released") for line in follower.lines)
    # The listener survived them all: the next valid message releases.
    assert await publish(client, channel, ready_message()) == 1
    released = await follower.expect("released")
    assert released["state"] == "ready" and released["drops"] == expected


async def test_the_follower_resubscribes_after_a_redis_restart(
        own_redis: RedisServer, namespace: str, spawn: Any, connect_redis: Any) -> None:
    _, follower = await waiting_follower(spawn, connect_redis, own_redis.url, namespace, poll=False)
    await asyncio.to_thread(own_redis.restart)  # the hash is gone with it (no persistence)
    await follower.expect("redis", redis_ok=False)
    await follower.expect("redis", redis_ok=True)
    client = connect_redis(own_redis.url, decode_responses=True)
    await async_wait_until(lambda: _subscribed(client, namespace), 10, what="re-subscribed")
    assert await client.exists(f"{{{namespace}}}:instance:{INSTANCE}") == 0
    # No hash to re-read and no poll: only the new subscription can carry this.
    assert await publish(client, f"{{{namespace}}}:instance:{INSTANCE}:events",
                                ready_message()) == 1
    released = await follower.expect("released")
    assert released["state"] == "ready"


async def test_a_stale_ready_hash_left_by_a_dead_owner_releases_no_one(
        redis_server: RedisServer, namespace: str) -> None:
    # A fixed COORD_INSTANCE_ID restarted after a crash: the old life's hash still says
    # ready (its key has not expired yet) but its heartbeat is older than its ttl.
    dead = {**starting_record(), "state": "ready", "heartbeat_at": str(time.time() - 60)}
    writer = make_redis(redis_server.url, namespace=namespace)
    await writer.hset(f"{{{namespace}}}:instance:{INSTANCE}", mapping=dead)
    follower = Coordinator(Settings(redis_url=redis_server.url, namespace=namespace,
                                    instance_id=INSTANCE, environment="test"),
                           role="follower")
    await follower.start()
    try:
        assert follower.redis_ok
        assert not await follower.wait_ready(0.5)  # link-up read and polls both ignore it
        assert follower.state.value == "starting"
        # The new owner's first live write is followed at once.
        await writer.hset(f"{{{namespace}}}:instance:{INSTANCE}",
                          mapping={**dead, "heartbeat_at": str(time.time())})
        assert await follower.wait_ready(5)
    finally:
        await follower.stop()
        await writer.aclose()


async def test_a_ready_follower_sees_a_lost_draining_within_a_heartbeat_interval(
        redis_server: RedisServer, namespace: str) -> None:
    """The owner starts draining, and its message never arrives: a ready follower once
    never read the hash again and admitted on. It re-reads it once an interval now."""
    ready = {**starting_record(), "state": "ready", "heartbeat_at": str(time.time())}
    writer = make_redis(redis_server.url, namespace=namespace)
    await writer.hset(f"{{{namespace}}}:instance:{INSTANCE}", mapping=ready)
    follower = Coordinator(Settings(redis_url=redis_server.url, namespace=namespace,
                                    instance_id=INSTANCE, environment="test",
                                    heartbeat_interval=0.2, instance_ttl=2.0),
                           role="follower")
    await follower.start()
    try:
        assert await follower.wait_ready(5)
        await writer.hset(f"{{{namespace}}}:instance:{INSTANCE}",  # no message published
                          mapping={"state": "draining", "heartbeat_at": str(time.time())})
        await async_wait_until(lambda: follower.state.value == "draining", 5,
                               what="the follower draining")
    finally:
        await follower.stop()
        await writer.aclose()
