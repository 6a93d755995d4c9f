"""Signing end to end: forged events and hashes never release a follower's held
connections, and no backend log line carries the signing key or the Redis password.

The follower gates real WebSocket clients under a real uvicorn; the owner runs the
startup in this process; the attacker is a plain Redis client without the key.
(tests/integration/test_signing.py: what else a signature binds, key rotation, ACL
users, TLS and the coordinator's own logs.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as redis

from coordinator import ConnectionGate, Coordinator
from coordinator.contract.events import MAX_MESSAGE_BYTES
from tests.support import (
    ACL_PASSWORD,
    CHAT,
    AclRedis,
    RedisServer,
    assert_chatted,
    async_wait_until,
    chat,
    event,
    instance_settings,
    publish,
    redis_mapping,
    run_phases,
    serving,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

KEY = "k3y-never-in-any-log-0d5e"
INSTANCE = "signed-1"
PHASES = ("init", "services")


async def welcome_app(scope: Any, receive: Any, send: Any) -> None:
    """The chat protocol of harness/chat.py: welcome, then an echo of each text."""
    await receive()
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send",
                "text": json.dumps({"type": "welcome", "instance": INSTANCE})})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": json.dumps({"text": message["text"]})})


@dataclass
class Pair:
    """An owner parked inside ``services`` and a follower gating ``url`` for it."""

    owner: Coordinator
    follower: Coordinator
    gate: ConnectionGate
    url: str
    finish: asyncio.Event


async def _startup(owner: Coordinator, finish: asyncio.Event) -> None:
    async with owner.phase("init"):
        pass
    async with owner.phase("services"):
        await finish.wait()


@contextlib.asynccontextmanager
async def owner_and_follower(redis_url: str, namespace: str,
                             key: str | None) -> AsyncIterator[Pair]:
    owner = Coordinator(instance_settings(redis_url, namespace, INSTANCE, key))
    follower = Coordinator(instance_settings(redis_url, namespace, INSTANCE, key), role="follower")
    finish = asyncio.Event()
    await owner.start()
    startup = asyncio.create_task(_startup(owner, finish))
    try:
        await follower.start()
        await async_wait_until(lambda: follower.current_phase == "services", 5,
                               what="the follower to see services")
        gate = ConnectionGate(welcome_app, follower)
        async with serving(gate) as url:
            yield Pair(owner, follower, gate, url, finish)
    finally:
        startup.cancel()
        await follower.stop()
        await owner.stop()


def ready_message(pair: Pair, key: str | None, ts: float | None = None) -> bytes:
    """What the owner publishes when ``services`` completes, signed with ``key``."""
    return event(INSTANCE, "phase_completed", "services", 2, ts=ts, key=key,
                 namespace=pair.owner.settings.namespace, state="ready",
                 started_at=pair.owner.status.started_at)


async def hold_two(pair: Pair) -> list[asyncio.Task[Any]]:
    clients = [asyncio.create_task(chat(pair.url, f"held {n}")) for n in range(2)]
    await async_wait_until(lambda: len(pair.gate.state.queue) == 2, 10, what="two held")
    return clients


async def test_forged_events_and_a_forged_hash_never_release_held_connections(
        redis_server: RedisServer, namespace: str, attacker: redis.Redis) -> None:
    async with owner_and_follower(redis_server.url, namespace, KEY) as pair:
        clients = await hold_two(pair)
        tampered = json.loads(event(INSTANCE, "phase_started", "services", 2, key=KEY,
                                    namespace=namespace, state="starting"))
        tampered.update(event="phase_completed", state="ready")  # a real sig, body changed
        forged = [
            ready_message(pair, None),  # unsigned
            ready_message(pair, "a-guessed-key"),  # wrongly signed
            json.dumps(tampered).encode(),
            ready_message(pair, KEY, ts=time.time() - 120),  # a stale replay
            b"\x00{garbage",
            ready_message(pair, None) + b" " * MAX_MESSAGE_BYTES,  # oversized
        ]
        channel = f"{{{namespace}}}:instance:{INSTANCE}:events"
        for data in forged:
            assert await publish(attacker, channel, data) == 2  # owner and follower hear it
        # The hash says ready too, but its `sig` still covers "starting".
        await attacker.hset(f"{{{namespace}}}:instance:{INSTANCE}", "state", "ready")

        drops = pair.follower.drops.counts
        expected = {"unsigned": 1, "bad_signature": 2, "stale": 1, "invalid_json": 1,
                    "oversized": 1}
        await async_wait_until(
            lambda: all(drops[k] == v for k, v in expected.items())
            and drops["bad_record_signature"] >= 1, 10,
            what=f"every forgery counted (have {dict(drops)})")
        assert pair.follower.state.value == "starting"
        assert len(pair.gate.state.queue) == 2
        assert not any(c.done() for c in clients)

        pair.finish.set()  # the real ready, signed by the owner, releases them
        outcomes = await asyncio.gather(*clients)
    for outcome in outcomes:
        assert_chatted(outcome, INSTANCE)


async def test_without_a_key_the_same_forgery_does_release_early(
        redis_server: RedisServer, namespace: str, attacker: redis.Redis) -> None:
    """The threat the key removes: anyone who can publish can open the gate."""
    async with owner_and_follower(redis_server.url, namespace, None) as pair:
        clients = await hold_two(pair)
        channel = f"{{{namespace}}}:instance:{INSTANCE}:events"
        assert await publish(attacker, channel, ready_message(pair, None)) == 2
        outcomes = await asyncio.gather(*clients)
        assert [o.kind for o in outcomes] == [CHAT, CHAT]
        assert pair.owner.state.value == "starting"  # released while still starting


async def test_a_signed_record_copied_into_another_instances_hash_releases_nobody(
        redis_server: RedisServer, namespace: str, attacker: redis.Redis) -> None:
    """The copy verifies (it is a real record, really signed) but names another id."""
    async with Coordinator(instance_settings(redis_server.url, namespace, "ready-one", KEY)) as one:
        await run_phases(one, *PHASES)
        async with owner_and_follower(redis_server.url, namespace, KEY) as pair:
            clients = await hold_two(pair)
            copied = await attacker.hgetall(f"{{{namespace}}}:instance:ready-one")
            target = f"{{{namespace}}}:instance:{INSTANCE}"
            await attacker.delete(target)
            await attacker.hset(target, mapping=redis_mapping(copied))
            drops = pair.follower.drops.counts
            await async_wait_until(lambda: drops["wrong_instance"] >= 2, 10,
                                   what=f"the copy to be read and refused ({dict(drops)})")
            assert pair.follower.state.value == "starting"
            assert len(pair.gate.state.queue) == 2 and not any(c.done() for c in clients)
            pair.finish.set()
            for outcome in await asyncio.gather(*clients):
                assert_chatted(outcome, INSTANCE)


async def test_a_message_signed_for_another_namespace_releases_nobody(
        redis_server: RedisServer, namespace: str, attacker: redis.Redis) -> None:
    """One key for two namespaces (staging and production, say): what one publishes is
    no signature in the other."""
    async with owner_and_follower(redis_server.url, namespace, KEY) as pair:
        clients = await hold_two(pair)
        elsewhere = event(INSTANCE, "phase_completed", "services", 2, key=KEY,
                          namespace=namespace + "-other", state="ready",
                          started_at=pair.owner.status.started_at)
        assert await publish(attacker, f"{{{namespace}}}:instance:{INSTANCE}:events",
                             elsewhere) == 2
        await async_wait_until(lambda: pair.follower.drops.counts["bad_signature"] == 1, 10,
                               what="the drop")
        assert pair.follower.state.value == "starting" and not any(c.done() for c in clients)
        pair.finish.set()
        await asyncio.gather(*clients)


async def test_backend_logs_carry_neither_the_key_nor_the_password(
        acl_redis: AclRedis, namespace: str, start_backend: Any) -> None:
    common = {"COORD_NAMESPACE": namespace, "COORD_SIGNING_KEY": KEY,
              "COORD_DRAIN_GRACE": "0.2", "BACKEND_PHASE_DURATIONS": "services=0.1"}
    wrong = "wrong-" + ACL_PASSWORD
    good = start_backend({**common, "COORD_REDIS_URL": acl_redis.url(),
                          "COORD_INSTANCE_ID": f"{namespace}-good"})
    bad = start_backend({**common, "COORD_REDIS_URL": acl_redis.url(password=wrong),
                         "COORD_INSTANCE_ID": f"{namespace}-bad"})
    await asyncio.gather(asyncio.to_thread(good.wait_ready), asyncio.to_thread(bad.wait_ready))
    admin = redis.Redis.from_url(acl_redis.url())
    # A forged event makes the good one log a drop (with the channel and the reason).
    assert await publish(admin, f"{{{namespace}}}:instance:{namespace}-good:events",
                         b"{}") == 1
    await async_wait_until(lambda: "dropped 1 invalid message" in good.log(), 10,
                           what="the drop to be logged")
    await admin.aclose()
    assert good.terminate() == 0 and bad.terminate() == 0
    for backend, redis_state in ((good, "redis link up"), (bad, "redis unavailable")):
        log = backend.log()
        assert redis_state in log and "coord:***@127.0.0.1" in log, log
        for secret in (ACL_PASSWORD, wrong, KEY):
            assert secret not in log
