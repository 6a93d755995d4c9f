"""Signing and Redis credentials: forged events and hashes never release a follower's held
connections; ACL users and TLS work; no log line carries the key or the password.

The follower gates real WebSocket clients under a real uvicorn; the owner runs the
startup in this process; the attacker is a plain Redis client without the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from coordinator import ConnectionGate, Coordinator, Settings
from coordinator.connections import make_redis
from coordinator.messages import MAX_MESSAGE_BYTES, Keyring, Message, encode
from tests.support import CHAT, assert_chatted, chat
from tests.integration.scripted import serving
from tests.support import RedisServer, async_wait_until, free_port

pytestmark = pytest.mark.redis

KEY = "k3y-never-in-any-log-0d5e"
PASSWORD = "pw-never-in-any-log-7f3a"
INSTANCE = "signed-1"
PHASES = ("init", "services")


def settings(url: str, namespace: str, **kw: Any) -> Settings:
    # A long heartbeat: nothing but the test rewrites the hash while it is forged.
    return Settings(redis_url=url, namespace=namespace, instance_id=INSTANCE, phases=PHASES,
                    ready_phase="services", environment="test", heartbeat_interval=30,
                    instance_ttl=60, **kw)


async def welcome_app(scope: Any, receive: Any, send: Any) -> None:
    """The chat protocol of tests/e2e/clients.py: welcome, then an echo of each text."""
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
    owner = Coordinator(settings(redis_url, namespace, signing_key=key))
    follower = Coordinator(settings(redis_url, namespace, signing_key=key), role="follower")
    finish = asyncio.Event()
    await owner.start()
    startup = asyncio.create_task(_startup(owner, finish))
    try:
        await follower.start()
        await async_wait_until(lambda: follower.current_phase == "services", 5,
                               what="the follower to see services")
        gate = ConnectionGate(welcome_app, follower)  # type: ignore[arg-type]
        async with serving(gate) as url:
            yield Pair(owner, follower, gate, url, finish)
    finally:
        startup.cancel()
        await follower.stop()
        await owner.stop()


def ready_message(pair: Pair, key: str | None, ts: float | None = None) -> bytes:
    """What the owner publishes when ``services`` completes, signed with ``key``."""
    return encode(Message(INSTANCE, "phase_completed", "services", 2,
                          time.time() if ts is None else ts,
                          {"state": "ready", "started_at": pair.owner.status.started_at}),
                  Keyring.of(key, pair.owner.settings.namespace))


@pytest.fixture
async def attacker(redis_server: RedisServer) -> AsyncIterator[redis.Redis]:
    """Can publish and write anything, and has no key."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def hold_two(pair: Pair) -> list[asyncio.Task[Any]]:
    clients = [asyncio.create_task(chat(pair.url, f"held {n}")) for n in range(2)]
    await async_wait_until(lambda: len(pair.gate.state.queue) == 2, 10, what="two held")
    return clients


async def test_forged_events_and_a_forged_hash_never_release_held_connections(
        redis_server: RedisServer, namespace: str, attacker: redis.Redis) -> None:
    async with owner_and_follower(redis_server.url, namespace, KEY) as pair:
        clients = await hold_two(pair)
        tampered = json.loads(encode(Message(INSTANCE, "phase_started", "services", 2,
                                             time.time(), {"state": "starting"}),
                                     Keyring.of(KEY, namespace)))
        tampered.update(event="phase_completed", state="ready")  # a real sig, body changed
        forged = [
            ready_message(pair, None),  # unsigned
            ready_message(pair, "a-guessed-key"),  # wrongly signed
            json.dumps(tampered).encode(),
            ready_message(pair, KEY, ts=time.time() - 120),  # a stale replay
            b"\x00{garbage",
            ready_message(pair, None) + b" " * MAX_MESSAGE_BYTES,  # oversized
        ]
        channel = f"{namespace}:instance:{INSTANCE}:events"
        for data in forged:
            assert await attacker.publish(channel, data) == 2  # owner and follower hear it
        # The hash says ready too, but its `sig` still covers "starting".
        await attacker.hset(f"{namespace}:instance:{INSTANCE}", "state", "ready")

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
        channel = f"{namespace}:instance:{INSTANCE}:events"
        assert await attacker.publish(channel, ready_message(pair, None)) == 2
        outcomes = await asyncio.gather(*clients)
        assert [o.kind for o in outcomes] == [CHAT, CHAT]
        assert pair.owner.state.value == "starting"  # released while still starting


# -- what a signature binds: the key's id, the namespace, liveness, the life ------------


def settings_for(url: str, namespace: str, instance: str, key: str | None,
                 **kw: Any) -> Settings:
    return Settings(redis_url=url, namespace=namespace, instance_id=instance, phases=PHASES,
                    ready_phase="services", environment="test", signing_key=key,
                    **{"heartbeat_interval": 30, "instance_ttl": 60, **kw})


async def run_to_ready(owner: Coordinator) -> None:
    for name in PHASES:
        async with owner.phase(name):
            pass


async def test_a_signed_record_copied_into_another_instances_hash_releases_nobody(
        redis_server: RedisServer, namespace: str, attacker: redis.Redis) -> None:
    """The copy verifies (it is a real record, really signed) but names another id."""
    async with Coordinator(settings_for(redis_server.url, namespace, "ready-one", KEY)) as one:
        await run_to_ready(one)
        async with owner_and_follower(redis_server.url, namespace, KEY) as pair:
            clients = await hold_two(pair)
            copied = await attacker.hgetall(f"{namespace}:instance:ready-one")
            target = f"{namespace}:instance:{INSTANCE}"
            await attacker.delete(target)
            await attacker.hset(target, mapping=copied)
            drops = pair.follower.drops.counts
            await async_wait_until(lambda: drops["wrong_instance"] >= 2, 10,
                                   what=f"the copy to be read and refused ({dict(drops)})")
            assert pair.follower.state.value == "starting"
            assert len(pair.gate.state.queue) == 2 and not any(c.done() for c in clients)
            pair.finish.set()
            for outcome in await asyncio.gather(*clients):
                assert_chatted(outcome, INSTANCE)


async def test_a_followers_first_life_is_not_released_by_a_replayed_ready(
        redis_server: RedisServer, namespace: str, attacker: redis.Redis) -> None:
    """The case of the issue: a follower that does not know its instance's started_at yet
    (the previous life removed its record, the next has not written one) is shown a signed
    ``ready`` of the previous life, captured seconds earlier: well within the 30 s a
    message stays fresh. It must hold on until the new life is ready."""
    channel = f"{namespace}:instance:{INSTANCE}:events"
    listener = attacker.pubsub()
    await listener.subscribe(channel)
    previous = Coordinator(settings_for(redis_server.url, namespace, INSTANCE, KEY))
    async with previous:
        await run_to_ready(previous)
    captured: list[bytes] = []
    deadline = time.monotonic() + 2  # everything was published already; collect it
    while time.monotonic() < deadline:
        msg = await listener.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if msg is not None:
            captured.append(msg["data"])
    await listener.aclose()
    releasing = [m for m in captured if json.loads(m)["event"] in ("ready", "phase_completed")]
    assert releasing and not await attacker.exists(f"{namespace}:instance:{INSTANCE}")

    follower = Coordinator(settings_for(redis_server.url, namespace, INSTANCE, KEY),
                           role="follower")
    async with follower:
        waiter = asyncio.create_task(follower.wait_ready(20))
        for data in releasing:
            assert await attacker.publish(channel, data) == 1
        # The next life starts: its first (fresh) event comes after the replays, so once
        # the follower shows it, it has judged every replay.
        successor = Coordinator(settings_for(redis_server.url, namespace, INSTANCE, KEY))
        async with successor:
            async with successor.phase("init"):
                await async_wait_until(lambda: follower.current_phase == "init", 10,
                                       what="the follower to see the new life's init")
                assert follower.state.value == "starting" and not waiter.done()
            await run_to_ready(successor)
            assert await asyncio.wait_for(waiter, 10)  # the new life's own ready does


async def test_a_message_signed_for_another_namespace_releases_nobody(
        redis_server: RedisServer, namespace: str, attacker: redis.Redis) -> None:
    """One key for two namespaces (staging and production, say): what one publishes is
    no signature in the other."""
    async with owner_and_follower(redis_server.url, namespace, KEY) as pair:
        clients = await hold_two(pair)
        elsewhere = encode(Message(INSTANCE, "phase_completed", "services", 2, time.time(),
                                   {"state": "ready",
                                    "started_at": pair.owner.status.started_at}),
                           Keyring.of(KEY, namespace + "-other"))
        assert await attacker.publish(f"{namespace}:instance:{INSTANCE}:events", elsewhere) == 2
        await async_wait_until(lambda: pair.follower.drops.counts["bad_signature"] == 1, 10,
                               what="the drop")
        assert pair.follower.state.value == "starting" and not any(c.done() for c in clients)
        pair.finish.set()
        await asyncio.gather(*clients)


@pytest.mark.parametrize(("owner_key", "follower_key"), [
    ("old,new", "old"), ("old,new", "new,old"), ("new,old", "old,new"), ("new", "new,old"),
], ids=["step-1", "step-1-2", "step-2", "step-3"])
async def test_keys_rotate_without_downtime(redis_server: RedisServer, namespace: str,
                                            owner_key: str, follower_key: str) -> None:
    """Rotation in three rolling steps (README: Signing): ``old,new``, then ``new,old``,
    then ``new``; at every mix of neighbouring steps the owner's signatures verify."""
    owner = Coordinator(settings_for(redis_server.url, namespace, INSTANCE, owner_key))
    follower = Coordinator(settings_for(redis_server.url, namespace, INSTANCE, follower_key),
                           role="follower")
    async with owner, follower:
        waiter = asyncio.create_task(follower.wait_ready(20))
        await asyncio.sleep(0)
        await run_to_ready(owner)
        assert await asyncio.wait_for(waiter, 10)
        assert follower.drops.total == 0


async def test_running_unsigned_is_said_once_at_start(
        redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with Coordinator(settings_for(redis_server.url, namespace, INSTANCE, KEY)):
        pass
    assert "unsigned" not in caplog.text
    unsigned = Coordinator(settings_for(redis_server.url, namespace, INSTANCE, None))
    await unsigned.start()
    await unsigned.start()  # idempotent: said once
    await unsigned.stop()
    lines = [r for r in caplog.records if "running unsigned" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert repr(namespace) in lines[0].getMessage()


# -- ACL users, TLS, and what the logs may say -------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (EC keys: fast)."""
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=test-ca",
        "-days", "2")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    return {name: d / name for name in ("ca.crt", "server.crt", "server.key")}


@dataclass
class AclRedis:
    server: RedisServer
    tls_port: int
    ca: Path

    def url(self, password: str = PASSWORD, tls: bool = False) -> str:
        if tls:
            return (f"rediss://coord:{password}@127.0.0.1:{self.tls_port}/0"
                    f"?ssl_ca_certs={self.ca}")
        return f"redis://coord:{password}@127.0.0.1:{self.server.port}/0"


@pytest.fixture(scope="module")
def acl_redis(tls_files: dict[str, Path]) -> Iterator[AclRedis]:
    """redis-server with the default user off, an ACL user ``coord``, and a TLS port."""
    tls_port = free_port()
    server = RedisServer(extra=(
        "--user", "default", "off",
        "--user", "coord", "on", f">{PASSWORD}", "~*", "&*", "+@all",
        "--tls-port", str(tls_port), "--tls-cert-file", str(tls_files["server.crt"]),
        "--tls-key-file", str(tls_files["server.key"]),
        "--tls-ca-cert-file", str(tls_files["ca.crt"]), "--tls-auth-clients", "no",
    )).start()
    yield AclRedis(server, tls_port, tls_files["ca.crt"])
    server.kill()


@pytest.mark.parametrize("tls", [False, True], ids=["redis", "rediss"])
async def test_acl_user_and_password_in_the_url_work_over_plain_and_tls(
        acl_redis: AclRedis, namespace: str, tls: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = acl_redis.url(tls=tls)
    anonymous = make_redis(acl_redis.server.url)
    with pytest.raises(redis.AuthenticationError):  # the default user really is off
        await anonymous.ping()
    await anonymous.aclose()
    async with Coordinator(settings(url, namespace, signing_key=KEY)) as owner:
        assert owner.redis_ok
        async with owner.phase("init"):
            pass
        admin = redis.Redis.from_url(url, decode_responses=True)
        record = await admin.hgetall(f"{namespace}:instance:{INSTANCE}")
        assert record["phase"] == "init" and record["sig"]
        await admin.aclose()
    assert "coord:***@" in caplog.text  # the URL is logged, redacted
    assert PASSWORD not in caplog.text
    assert KEY not in caplog.text


async def test_a_wrong_password_degrades_to_local_gating_and_logs_no_secret(
        acl_redis: AclRedis, namespace: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + PASSWORD
    owner = Coordinator(settings(acl_redis.url(password=wrong), namespace, signing_key=KEY))
    await owner.start()
    assert not owner.redis_ok
    async with owner.phase("init"):
        pass
    async with owner.phase("services"):
        pass
    assert owner.is_ready  # started and gates without Redis
    await owner.stop()
    assert "redis unavailable" in caplog.text
    for secret in (PASSWORD, wrong, KEY):
        assert secret not in caplog.text
    assert PASSWORD not in repr(owner.settings) and KEY not in repr(owner.settings)


@pytest.mark.e2e
async def test_backend_logs_carry_neither_the_key_nor_the_password(
        acl_redis: AclRedis, namespace: str, start_backend: Any) -> None:
    common = {"COORD_NAMESPACE": namespace, "COORD_SIGNING_KEY": KEY,
              "COORD_DRAIN_GRACE": "0.2", "BACKEND_PHASE_DURATIONS": "services=0.1"}
    wrong = "wrong-" + PASSWORD
    good = start_backend({**common, "COORD_REDIS_URL": acl_redis.url(),
                          "COORD_INSTANCE_ID": f"{namespace}-good"})
    bad = start_backend({**common, "COORD_REDIS_URL": acl_redis.url(password=wrong),
                         "COORD_INSTANCE_ID": f"{namespace}-bad"})
    await asyncio.gather(asyncio.to_thread(good.wait_ready), asyncio.to_thread(bad.wait_ready))
    admin = redis.Redis.from_url(acl_redis.url())
    # A forged event makes the good one log a drop (with the channel and the reason).
    assert await admin.publish(f"{namespace}:instance:{namespace}-good:events", b"{}") == 1
    await async_wait_until(lambda: "dropped 1 invalid message" in good.log(), 10,
                           what="the drop to be logged")
    await admin.aclose()
    assert good.terminate() == 0 and bad.terminate() == 0
    for backend, redis_state in ((good, "redis link up"), (bad, "redis unavailable")):
        log = backend.log()
        assert redis_state in log and "coord:***@127.0.0.1" in log, log
        for secret in (PASSWORD, wrong, KEY):
            assert secret not in log


async def test_tls_refuses_a_certificate_for_another_host_name(acl_redis: AclRedis) -> None:
    """redis>=6 (the floor in pyproject.toml) checks the host name by default; 5.x did not.
    The server's certificate names 127.0.0.1 only: reached as localhost, it is refused."""
    good = make_redis(acl_redis.url(tls=True))
    assert await good.ping()
    await good.aclose()
    wrong_name = make_redis(acl_redis.url(tls=True).replace("127.0.0.1", "localhost"))
    with pytest.raises(redis.ConnectionError, match="(?i)certificate|hostname|match"):
        await wrong_name.ping()
    await wrong_name.aclose()
