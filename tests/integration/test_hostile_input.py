"""Hostile data on a real redis-server: whatever anyone who can write to the namespace
publishes or stores, an instance counts a drop and goes on. No traceback per message, no
Redis link lost, no task killed, no connection released."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as redis

from coordinator import ConnectionGate, Coordinator, Settings
from coordinator.contract.rejection import reason_payload
from coordinator.fleet.registry import MAX_PHASE_SECONDS
from coordinator.settings import DEFAULT_PHASES
from tests.support import (
    DENIAL,
    FakeWebSocket,
    RedisServer,
    async_wait_until,
    event,
    publish,
    redis_mapping,
)

pytestmark = pytest.mark.redis

KEY = "hostile-input-key"
INSTANCE = "target-1"
PHASES = ("init", "services")


def settings(url: str, namespace: str, **kw: Any) -> Settings:
    return Settings(redis_url=url, namespace=namespace, instance_id=INSTANCE, phases=PHASES,
                    ready_phase="services", environment="test", **kw)


async def nothing(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("no connection reaches the app in these tests")


@dataclass
class Instance:
    owner: Coordinator
    follower: Coordinator
    gate: ConnectionGate
    finish: asyncio.Event


@contextlib.asynccontextmanager
async def starting_instance(url: str, namespace: str, **kw: Any) -> AsyncIterator[Instance]:
    """An owner parked in ``services`` and a follower (with a gate) that knows it."""
    owner = Coordinator(settings(url, namespace, **kw))
    follower = Coordinator(settings(url, namespace, **kw), role="follower")
    gate = ConnectionGate(nothing, follower)
    finish = asyncio.Event()

    async def startup() -> None:
        async with owner.phase("init"):
            pass
        async with owner.phase("services"):
            await finish.wait()

    await owner.start()
    task = asyncio.create_task(startup())
    try:
        await follower.start()
        await async_wait_until(lambda: follower.current_phase == "services", 10,
                               what="the follower to see services")
        yield Instance(owner, follower, gate, finish)
    finally:
        task.cancel()
        await follower.stop()
        await owner.stop()


def hostile_messages(signed_body: dict[str, Any]) -> dict[str, bytes]:
    """One of each kind of malformed message, by the drop reason it must count as."""
    def dumped(**changes: Any) -> bytes:
        return json.dumps({**signed_body, **changes}).encode()

    return {
        "deep nesting": b"[" * 4000,
        "a sig that is not ASCII": dumped(sig="\u00e9"),
        "NaN": dumped(started_at=0).replace(b'"started_at": 0', b'"started_at": NaN'),
        "a number beyond a float": dumped(started_at=0).replace(b'"started_at": 0',
                                                                b'"started_at": 1' + b"0" * 400),
        "a huge phase_index": dumped(phase_index=10 ** 30),
        "bad UTF-8": dumped(state="x").replace(b'"x"', b'"\xff\xfe"'),
        "wrong types": dumped(instance=["target-1"], ts="now"),
    }


async def test_malformed_messages_are_counted_drops_and_the_link_stays_up(
        redis_server: RedisServer, namespace: str, attacker: redis.Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with starting_instance(redis_server.url, namespace, signing_key=KEY,
                                 fleet_max_queue=2) as inst:
        body = json.loads(event(INSTANCE, "ready", "services", 2, key=KEY, namespace=namespace,
                                state="ready", started_at=1.0))
        channel = f"{{{namespace}}}:instance:{INSTANCE}:events"
        kinds = hostile_messages(body)
        link_samples: list[bool] = []
        rounds = 5
        for _ in range(rounds):  # a steady stream, as an attacker would keep it up
            for data in kinds.values():
                assert await publish(attacker, channel, data) == 2  # owner and follower
                link_samples.append(inst.owner.redis_ok and inst.follower.redis_ok)
            await asyncio.sleep(0.02)
        expected = rounds * len(kinds)
        for coord in (inst.owner, inst.follower):
            await async_wait_until(lambda c=coord: c.drops.total >= expected, 10,  # type: ignore[misc]
                                   what=f"every message counted as a drop ({coord.drops.counts})")
            assert coord.drops.total == expected
            assert set(coord.drops.counts) <= {"invalid_json", "invalid_schema", "bad_signature"}
            assert coord.redis_ok and coord.redis_errors == 0
        assert all(link_samples)
        assert inst.gate.state.leases.mode == "fleet"  # the fleet cap still applies
        assert inst.follower.state.value == "starting"
        # Rate-limited: one warning line per reader, no traceback, no handler failure.
        assert "a message handler failed" not in caplog.text
        assert "Traceback" not in caplog.text
        drop_lines = [r for r in caplog.records if "dropped" in r.getMessage()]
        assert len(drop_lines) <= 2


async def test_a_bad_sig_in_the_hash_does_not_kill_the_followers_poll(
        redis_server: RedisServer, namespace: str, attacker: redis.Redis) -> None:
    async with starting_instance(redis_server.url, namespace, signing_key=KEY,
                                 heartbeat_interval=30, instance_ttl=60) as inst:
        key = f"{{{namespace}}}:instance:{INSTANCE}"
        await attacker.hset(key, mapping={"state": "ready", "sig": "\u00e9"})
        waiter = asyncio.create_task(inst.follower.wait_ready(30))  # starts the poll
        await async_wait_until(
            lambda: inst.follower.drops.counts["bad_record_signature"] >= 3, 10,
            what="the poll to read (and drop) the forged hash again and again")
        assert not waiter.done()
        inst.finish.set()  # the owner's real ready (and its real hash) release the waiter
        assert await asyncio.wait_for(waiter, 10)


async def test_oversized_messages_are_discarded_unread_in_bounded_memory(
        redis_server: RedisServer, namespace: str) -> None:
    """Three 8 MB publishes on the channel an instance follows: each is one ``oversized``
    drop, and the instance never holds more than a small buffer of any of them (redis-py's
    own reader would hold each whole, and a copy: over 16 MB)."""
    async with Coordinator(settings(redis_server.url, namespace)) as owner:
        await async_wait_until(lambda: owner.redis_ok, 10, what="the link")
        size, count = 8 << 20, 3
        publisher = (  # in another process: its own copies are not this one's memory
            "import asyncio, sys\n"
            "from coordinator._redis.client import make_redis\n"
            "from tests.support import publish\n"
            "async def main(url, namespace, channel, size, count):\n"
            "    r = make_redis(url, namespace=namespace); p = b'x' * int(size)\n"
            "    for _ in range(int(count)): assert await publish(r, channel, p) == 1\n"
            "    await r.aclose()\n"
            "asyncio.run(main(*sys.argv[1:]))\n")
        tracemalloc.start()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", publisher, redis_server.url, namespace,
                f"{{{namespace}}}:instance:{INSTANCE}:events", str(size), str(count))
            assert await proc.wait() == 0
            await async_wait_until(lambda: owner.drops.counts["oversized"] == count, 20,
                                   what=f"{count} oversized drops ({owner.drops.counts})")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 2 << 20, f"peak {peak / 2 ** 20:.1f} MiB while reading {count} x 8 MiB"
        assert owner.redis_ok and owner.redis_errors == 0
        assert owner.drops.total == count


@pytest.mark.parametrize("reject", ["http", "close"])
async def test_absurd_phase_statistics_give_a_bounded_hint_and_a_valid_close_reason(
        redis_server: RedisServer, namespace: str, attacker: redis.Redis, reject: str) -> None:
    """``N:phase_stats`` of 1e300 once gave a 301-digit Retry-After and a close reason cut
    mid-JSON. Statistics are clamped when read, hints to COORD_MAX_RETRY_AFTER."""
    junk = {f"junk-{n}": "1" for n in range(2000)}  # fields no phase has: never read
    await attacker.hset(f"{{{namespace}}}:phase_stats", mapping=redis_mapping({
        **junk, **dict.fromkeys(DEFAULT_PHASES, "1e300"), "websocket": "inf",
        "finalize": "nan"}))
    owner = Coordinator(Settings(redis_url=redis_server.url, namespace=namespace,
                                 instance_id=INSTANCE, environment="test", reject=reject,
                                 max_retry_after=7))
    gate = ConnectionGate(nothing, owner)
    handshake = FakeWebSocket(DENIAL)  # as uvicorn presents one: the denial is offered
    async with owner:
        assert set(owner.phase_stats) == set(DEFAULT_PHASES) - {"websocket", "finalize"}
        assert max(owner.phase_stats.values()) == MAX_PHASE_SECONDS
        async with owner.phase("init"):  # far from ready: rejected with a hint
            await gate(handshake.scope, handshake.receive, handshake.send)
    at_cap = {6, 7}  # the hint is the cap, spread over the last second below it
    if reject == "http":
        status, headers, reason = handshake.denial()
        assert status == 503 and int(headers[b"retry-after"]) == reason["retry_after"]
    else:
        code, reason = handshake.close_reason()  # a valid JSON of at most 123 bytes
        assert code == 1013
    assert reason["reason"] == "starting" and reason["retry_after"] in at_cap


def test_a_close_reason_is_valid_json_within_123_bytes_whatever_it_is_given() -> None:
    for reason, hint in [("starting", 10 ** 300), ("x" * 500, 5), ("\u00e9" * 200, 1e300),
                         ("queue_full", float("nan")), ("draining", -5)]:
        text = reason_payload(reason, hint)  # type: ignore[arg-type]
        assert len(text.encode()) <= 123
        body = json.loads(text)
        assert 1 <= body["retry_after"] <= 86400 and reason.startswith(body["reason"])
