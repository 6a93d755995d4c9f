"""The fleet view is bounded in bytes and, with a signing key, verified: a forged record
of 64 KiB (1,000 of them made /fleet 65.7 MB and stalled the gating loop) is never read,
a forged ttl of 1e10 no longer keeps a dead record live, and a writer without the key
cannot add an instance to the view."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as redis

from coordinator.contract.keys import Keys
from coordinator.contract.record import MAX_TTL
from coordinator.contract.signing import sign_record
from coordinator.fleet.view import MAX_RECORD_BYTES, FleetReader
from tests.support import instance_record, keyring, put_instance, put_record, redis_mapping

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("scripts", [True, False], ids=["script", "pipeline"])
async def test_a_record_too_large_is_never_read(client: redis.Redis, namespace: str,
                                                scripts: bool) -> None:
    keys, now = Keys(namespace), time.time()
    await put_instance(client, keys, "real", now)
    await put_instance(client, keys, "huge", now, host="x" * (4 * MAX_RECORD_BYTES))
    reader = FleetReader(client, keys, prune=False)
    reader.scripts = scripts  # False: as an operator whose ACL refuses scripts reads
    doc = await reader.snapshot(now=now)
    assert [i["id"] for i in doc["instances"]] == ["real"]
    assert reader.dropped["oversized"] == (0 if scripts else 1)  # the script says nothing


async def test_a_forged_ttl_does_not_keep_a_dead_record_live(
        client: redis.Redis, namespace: str) -> None:
    keys, now = Keys(namespace), time.time()
    await put_instance(client, keys, "live", now)
    await put_instance(client, keys, "ghost", now, ttl=1e10, beat_age=MAX_TTL + 60)
    doc = await FleetReader(client, keys, prune=False).snapshot(now=now)
    assert [i["id"] for i in doc["instances"]] == ["live"]


async def test_with_a_key_only_records_that_verify_and_are_their_own_are_listed(
        client: redis.Redis, namespace: str) -> None:
    keys, now, ring = Keys(namespace), time.time(), keyring("k1", namespace)
    signed = instance_record("signed", now)
    await put_record(client, keys, {**signed, "sig": sign_record(signed, ring)})
    await put_instance(client, keys, "unsigned", now)  # a writer without the key
    copy = {**signed, "sig": sign_record(signed, ring)}
    await client.hset(keys.instance("copied"), mapping=redis_mapping(copy))  # a new id
    await client.zadd(keys.instances, {"copied": now})
    reader = FleetReader(client, keys, prune=False, keyring=ring)
    doc = await reader.snapshot(now=now)
    assert [i["id"] for i in doc["instances"]] == ["signed"]
    assert reader.dropped["signature"] == 2
