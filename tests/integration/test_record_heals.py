"""A record write replaces the record whole and heals what a stray writer left: a field
added (which, with a signing key, made the record fail its signature for good), a key of
another type (every write failed and counted as a lost link), an index that is not a
sorted set. A reader takes a key of another type as no record, not as an outage."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis

from coordinator import Coordinator, Settings
from coordinator._redis.pubsub import bounded_pubsub
from coordinator.contract.keys import Keys
from coordinator.contract.signing import record_signature_ok
from coordinator.fleet.registry import read_record, write_record
from tests.support import (
    RedisServer,
    async_wait_until,
    instance_record,
    publish,
    subscribers,
)

pytestmark = [pytest.mark.redis, pytest.mark.matrix]

INSTANCE = "heal-1"
BEAT = 0.2


def settings(url: str, namespace: str, **kw: Any) -> Settings:
    return Settings(redis_url=url, namespace=namespace, instance_id=INSTANCE,
                    environment="test", heartbeat_interval=BEAT, instance_ttl=2.0, **kw)


@contextlib.asynccontextmanager
async def linked(url: str, namespace: str, **kw: Any) -> AsyncIterator[Coordinator]:
    """A started owner whose Redis link is up; on leaving, it never lost it."""
    async with Coordinator(settings(url, namespace, **kw)) as coord:
        await async_wait_until(lambda: coord.redis_ok, 10, what="the link")
        yield coord
        assert coord.redis_ok and coord.redis_errors == 0


async def key_type(client: redis.Redis, key: str) -> str:
    kind = await client.type(key)
    return kind.decode() if isinstance(kind, bytes) else str(kind)


async def test_a_field_another_writer_added_is_gone_at_the_next_heartbeat(
        redis_server: RedisServer, namespace: str, client: redis.Redis) -> None:
    keys = Keys(namespace)
    async with linked(redis_server.url, namespace, signing_key="k1") as coord:
        await client.hset(keys.instance(INSTANCE), "stray", "x")

        async def healed() -> bool:
            raw = await read_record(client, keys, INSTANCE)
            return "stray" not in raw and record_signature_ok(raw, coord.keyring)

        await async_wait_until(healed, 10 * BEAT + 5, what="the record written whole")


async def test_a_record_key_of_another_type_is_replaced_not_a_lost_link(
        redis_server: RedisServer, namespace: str, client: redis.Redis) -> None:
    keys = Keys(namespace)
    async with linked(redis_server.url, namespace):
        await client.set(keys.instance(INSTANCE), "not a hash")
        await async_wait_until(lambda: _is(client, keys.instance(INSTANCE), "hash"),
                               10 * BEAT + 5, what="the record a hash again")


async def test_an_index_of_another_type_is_rebuilt_by_the_heartbeats(
        redis_server: RedisServer, namespace: str, client: redis.Redis) -> None:
    keys = Keys(namespace)
    async with linked(redis_server.url, namespace):
        await client.delete(keys.instances)
        await client.set(keys.instances, "not a sorted set")

        async def listed() -> bool:
            return (await _is(client, keys.instances, "zset")
                    and await client.zscore(keys.instances, INSTANCE) is not None)

        await async_wait_until(listed, 10 * BEAT + 5, what="the index rebuilt")


async def test_a_follower_reads_a_record_of_another_type_as_no_record(
        redis_server: RedisServer, namespace: str, client: redis.Redis) -> None:
    keys = Keys(namespace)
    await client.set(keys.instance(INSTANCE), "not a hash")
    async with Coordinator(settings(redis_server.url, namespace), role="follower") as coord:
        await async_wait_until(lambda: coord.redis_ok, 10, what="the link")
        assert coord.redis_errors == 0 and coord.state.value == "starting"
    assert await read_record(client, keys, INSTANCE) == {}


async def _is(client: redis.Redis, key: str, kind: str) -> bool:
    return await key_type(client, key) == kind


async def test_healing_the_index_publishes_the_event_of_the_write_once(
        redis_server: RedisServer, namespace: str, client: redis.Redis) -> None:
    """EXEC ran the publishes of the write whose ZADD met a string index: the write done
    again after the heal carries no event, so subscribers hear the transition once."""
    keys = Keys(namespace)
    await client.set(keys.instances, "not a sorted set")
    listener = bounded_pubsub(client)
    try:
        await listener.follow(keys.events)
        await async_wait_until(lambda: subscribers(client, keys.events), 5,
                               what="subscribed")
        record = instance_record(INSTANCE, time.time())
        await write_record(client, keys, record, 10.0, time.time(), event=b"transition")
        await publish(client, keys.events, b"end")  # after the write, on the same server
        heard: list[bytes] = []

        async def ended() -> bool:
            msg = await listener.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if msg is not None:
                heard.append(msg["data"])
            return heard[-1:] == [b"end"]

        await async_wait_until(ended, 5, what="the end marker")
        assert heard == [b"transition", b"end"]
        assert await _is(client, keys.instances, "zset")
    finally:
        await listener.aclose()
