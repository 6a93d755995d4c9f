"""DESIGN.md's Redis contract, read back from a real redis-server as an operator would."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

import pytest
import redis.asyncio as redis

from coordinator._redis import topology
from coordinator.fleet.registry import PHASE_STATS_ALPHA
from coordinator.instance.coordinator import Coordinator
from coordinator.settings import DEFAULT_PHASES, Settings
from tests.support import RedisServer, async_wait_until

pytestmark = pytest.mark.redis

INSTANCE = "web-1"
TTL = 1.5
HEARTBEAT = 0.2
KEY = "contract-signing-key"
REQUIRED_FIELDS = {"id", "state", "phase", "phase_index", "phases_total", "started_at",
                   "updated_at", "heartbeat_at", "ttl", "queue_depth", "queue_max", "admitted",
                   "rejected", "host", "version"}
MESSAGE_FIELDS = {"v", "instance", "event", "phase", "phase_index", "ts"}


def startup_events() -> list[tuple[str, str]]:
    expected = []
    for name in DEFAULT_PHASES:
        expected += [("phase_started", name), ("phase_completed", name)]
        if name == "services":
            expected.append(("ready", "services"))
    return expected


@pytest.fixture
async def make_owner(redis_server: RedisServer, namespace: str):
    made: list[Coordinator] = []

    async def make(**overrides: Any) -> Coordinator:
        settings = Settings(redis_url=redis_server.url, namespace=namespace,
                            instance_id=INSTANCE, environment="test",
                            **{"heartbeat_interval": HEARTBEAT, "instance_ttl": TTL, **overrides})
        coord = Coordinator(settings)
        made.append(coord)
        await coord.start()
        assert coord.redis_ok
        return coord

    yield make
    for coord in made:
        await coord.stop()


class Listener:
    """Subscribed to both channels before anything is published; keeps every message."""

    def __init__(self, redis_text: redis.Redis, namespace: str) -> None:
        self.client = redis_text
        self.pubsub = redis_text.pubsub()
        self.channels = (f"{{{namespace}}}:events", f"{{{namespace}}}:instance:{INSTANCE}:events")
        self.messages: dict[str, list[dict[str, Any]]] = {c: [] for c in self.channels}

    async def __aenter__(self) -> Listener:
        if (await topology.resolve(self.client)).sharded:
            await self.pubsub.ssubscribe(*self.channels)
        else:
            await self.pubsub.subscribe(*self.channels)
        confirmed = 0
        while confirmed < len(self.channels):  # the server holds both subscriptions now
            msg = await self.pubsub.get_message(timeout=5.0)
            assert msg is not None, "no subscribe confirmation"
            confirmed += msg["type"] in ("subscribe", "ssubscribe")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pubsub.aclose()

    async def collect(self, count: int, timeout: float = 5.0) -> None:
        """Read until each channel has delivered at least ``count`` messages."""
        async def enough() -> bool:
            while (msg := await self.pubsub.get_message(timeout=0.01)) is not None:
                if msg["type"] in ("message", "smessage"):
                    self.messages[msg["channel"]].append(json.loads(msg["data"]))
            return all(len(ms) >= count for ms in self.messages.values())
        await async_wait_until(enough, timeout, what=f"{count} messages on both channels")

    def events(self, channel: str) -> list[tuple[str, str | None]]:
        return [(m["event"], m["phase"]) for m in self.messages[channel]]

    def all_messages(self) -> list[dict[str, Any]]:
        return [m for ms in self.messages.values() for m in ms]


async def run_phases(coord: Coordinator, names: tuple[str, ...] = DEFAULT_PHASES) -> None:
    for name in names:
        async with coord.phase(name):
            await asyncio.sleep(0.01)


async def heartbeat_and_score(redis_text: redis.Redis, namespace: str) -> tuple[str, float]:
    """The hash's heartbeat_at and the index score, read atomically."""
    async with redis_text.pipeline(transaction=True) as pipe:
        pipe.hget(f"{{{namespace}}}:instance:{INSTANCE}", "heartbeat_at")
        pipe.zscore(f"{{{namespace}}}:instances", INSTANCE)
        beat, score = await pipe.execute()
    return beat, score


async def test_phases_publish_every_transition_on_both_channels(
        make_owner, namespace: str, redis_text: redis.Redis) -> None:
    coord = await make_owner()
    expected = startup_events()
    async with Listener(redis_text, namespace) as listener:
        await run_phases(coord)
        await listener.collect(len(expected))
    for channel in listener.channels:
        assert listener.events(channel) == expected, channel
    assert listener.messages[listener.channels[0]] == listener.messages[listener.channels[1]]
    for msg in listener.all_messages():
        assert set(msg) >= MESSAGE_FIELDS, msg
        assert msg["v"] == 1 and msg["instance"] == INSTANCE
        assert msg["phase_index"] == DEFAULT_PHASES.index(msg["phase"]) + 1
        assert abs(msg["ts"] - time.time()) < 30
        assert "sig" not in msg
    completed = [m for m in listener.messages[listener.channels[0]]
                 if m["event"] == "phase_completed"]
    assert all(m["duration"] >= 0.01 for m in completed)  # each phase slept 0.01 s


async def test_the_first_event_of_a_new_instance_is_its_first_phase_never_a_null_phase(
        make_owner, namespace: str, redis_text: redis.Redis) -> None:
    """The link comes up before any phase has started: the record is written (the fleet
    view shows the instance starting), but no ``phase_started`` with a null phase."""
    async with Listener(redis_text, namespace) as listener:
        coord = await make_owner()  # its link comes up now, with no phase yet
        await async_wait_until(lambda: redis_text.exists(f"{{{namespace}}}:instance:{INSTANCE}"),
                               5, what="the record")
        await run_phases(coord, ("init",))
        await listener.collect(2)
    for channel in listener.channels:
        assert listener.events(channel) == [("phase_started", "init"),
                                            ("phase_completed", "init")], channel


async def test_instance_hash_fields_ttl_and_index(make_owner, namespace: str,
                                                 redis_text: redis.Redis) -> None:
    coord = await make_owner()
    key = f"{{{namespace}}}:instance:{INSTANCE}"
    async with Listener(redis_text, namespace) as listener:
        await run_phases(coord)
        await listener.collect(len(startup_events()))  # the last write went out with it

    record = await redis_text.hgetall(key)
    assert set(record) >= REQUIRED_FIELDS, REQUIRED_FIELDS - set(record)
    assert record["id"] == INSTANCE
    assert record["state"] == "ready"
    assert record["phase"] == "finalize"
    assert (record["phase_index"], record["phases_total"]) == ("7", "7")
    assert float(record["ttl"]) == TTL
    assert (record["queue_depth"], record["queue_max"]) == ("0", "50")
    assert (record["admitted"], record["rejected"]) == ("0", "0")
    assert record["host"] and record["version"]
    started, updated = float(record["started_at"]), float(record["updated_at"])
    assert started <= updated <= float(record["heartbeat_at"]) <= time.time()
    assert "sig" not in record
    assert 0 < await redis_text.pttl(key) <= TTL * 1000

    beat, score = await heartbeat_and_score(redis_text, namespace)
    assert score == float(beat)
    # The heartbeat alone (no event) refreshes hash, TTL and index score together.
    await async_wait_until(
        lambda: _beat_after(redis_text, namespace, float(beat)), 5, what="a heartbeat")
    new_beat, new_score = await heartbeat_and_score(redis_text, namespace)
    assert new_score == float(new_beat) > float(beat)
    assert 0 < await redis_text.pttl(key) <= TTL * 1000
    assert await redis_text.zrange(f"{{{namespace}}}:instances", 0, -1) == [INSTANCE]


async def _beat_after(redis_text: redis.Redis, namespace: str, after: float) -> bool:
    beat, _ = await heartbeat_and_score(redis_text, namespace)
    return beat is not None and float(beat) > after


async def test_phase_stats_are_folded_after_the_last_phase(make_owner, namespace: str,
                                                          redis_text: redis.Redis) -> None:
    stats_key = f"{{{namespace}}}:phase_stats"
    await redis_text.hset(stats_key, "services", "4.0")  # an earlier startup's average
    coord = await make_owner()
    await run_phases(coord, DEFAULT_PHASES)  # folded once, after the last (checked below)
    await async_wait_until(lambda: _hlen(redis_text, stats_key, len(DEFAULT_PHASES)), 5,
                           what="every phase in N:phase_stats")
    stats = {k: float(v) for k, v in (await redis_text.hgetall(stats_key)).items()}
    for name in DEFAULT_PHASES:
        measured = coord.phase_durations[name]
        if name == "services":
            assert stats[name] == pytest.approx(
                4.0 * (1 - PHASE_STATS_ALPHA) + measured * PHASE_STATS_ALPHA, abs=1e-3)
        else:
            assert stats[name] == pytest.approx(measured, abs=1e-3)


async def _hlen(redis_text: redis.Redis, key: str, n: int) -> bool:
    return await redis_text.hlen(key) == n


async def test_stop_removes_the_hash_and_index_entry_and_publishes_stopped(
        make_owner, namespace: str, redis_text: redis.Redis) -> None:
    coord = await make_owner()
    await run_phases(coord, DEFAULT_PHASES[:5])
    key = f"{{{namespace}}}:instance:{INSTANCE}"
    await async_wait_until(lambda: _state_is(redis_text, key, "ready"), 5, what="ready hash")
    assert await redis_text.zscore(f"{{{namespace}}}:instances", INSTANCE) is not None
    async with Listener(redis_text, namespace) as listener:
        await coord.stop()
        await listener.collect(1)
    assert await redis_text.exists(key) == 0
    assert await redis_text.zscore(f"{{{namespace}}}:instances", INSTANCE) is None
    for channel in listener.channels:
        assert listener.events(channel) == [("stopped", "services")]
        assert set(listener.messages[channel][0]) >= MESSAGE_FIELDS


async def _state_is(redis_text: redis.Redis, key: str, state: str) -> bool:
    return await redis_text.hget(key, "state") == state


def expected_sig(fields: Mapping[Any, Any], namespace: str, kind: str = "event") -> str:
    """HMAC-SHA256 over the kind, the namespace and the canonical JSON (docs/redis-contract.md)."""
    text = f"{kind}\n{namespace}\n" + json.dumps(
        {k: v for k, v in fields.items() if k != "sig"}, sort_keys=True, separators=(",", ":"))
    return hmac.new(KEY.encode(), text.encode(), hashlib.sha256).hexdigest()


async def test_with_a_signing_key_events_and_the_hash_are_signed(
        make_owner, namespace: str, redis_text: redis.Redis) -> None:
    coord = await make_owner(signing_key=KEY)
    async with Listener(redis_text, namespace) as listener:
        await run_phases(coord, DEFAULT_PHASES[:5])
        await listener.collect(len(startup_events()[:11]))
        await coord.stop()
        await listener.collect(12)
    messages = listener.all_messages()
    assert {m["event"] for m in messages} == {"phase_started", "phase_completed", "ready",
                                             "stopped"}
    for msg in messages:
        assert msg["sig"] == expected_sig(msg, namespace), msg
    # The hash, caught while the instance was up: its sig covers every other field.
    coord = await make_owner(signing_key=KEY)
    await run_phases(coord, DEFAULT_PHASES[:2])
    key = f"{{{namespace}}}:instance:{INSTANCE}"
    await async_wait_until(lambda: _phase_is(redis_text, key, "dependencies"), 5,
                           what="the hash in phase dependencies")
    record = await redis_text.hgetall(key)
    assert {"heartbeat_at", "ttl", "id", "state"} <= set(record)
    assert record["sig"] == expected_sig(record, namespace, kind="record")


async def _phase_is(redis_text: redis.Redis, key: str, phase: str) -> bool:
    return await redis_text.hget(key, "phase") == phase


async def test_the_record_written_when_the_link_comes_up_agrees_with_itself(
        make_owner, namespace: str, redis_text: redis.Redis) -> None:
    # No heartbeat within the test to correct what the link-up republish wrote.
    await make_owner(fleet_max_queue=5, heartbeat_interval=60.0, instance_ttl=120.0)
    record = await redis_text.hgetall(f"{{{namespace}}}:instance:{INSTANCE}")
    assert (record["redis"], record["fleet_cap_mode"], record["fleet_cap"]) == ("ok", "fleet", "5")
