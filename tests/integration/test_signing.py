"""Signing and Redis credentials: what a signature binds (a replayed ready of an earlier
life releases nobody), keys rotate without downtime, running unsigned is said; ACL users
and TLS work, a wrong password degrades to local gating, no log line carries the key or
the password. (tests/e2e/test_signing.py: forged events against a follower's held
connections under a real uvicorn.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

import pytest
import redis.asyncio as redis

from coordinator import Coordinator
from coordinator._redis.client import make_redis
from coordinator._redis.pubsub import bounded_pubsub
from tests.support import (
    ACL_PASSWORD,
    AclRedis,
    RedisServer,
    async_wait_until,
    instance_settings,
    publish,
    run_phases,
)

pytestmark = pytest.mark.redis

KEY = "k3y-never-in-any-log-0d5e"
INSTANCE = "signed-1"
PHASES = ("init", "services")


async def test_a_followers_first_life_is_not_released_by_a_replayed_ready(
        redis_server: RedisServer, namespace: str, attacker: redis.Redis) -> None:
    """The case of the issue: a follower that does not know its instance's started_at yet
    (the previous life removed its record, the next has not written one) is shown a signed
    ``ready`` of the previous life, captured seconds earlier: well within the 30 s a
    message stays fresh. It must hold on until the new life is ready."""
    channel = f"{{{namespace}}}:instance:{INSTANCE}:events"
    listener = bounded_pubsub(attacker)
    await listener.follow(channel)
    previous = Coordinator(instance_settings(redis_server.url, namespace, INSTANCE, KEY))
    async with previous:
        await run_phases(previous, *PHASES)
    captured: list[bytes] = []
    deadline = time.monotonic() + 2  # everything was published already; collect it
    while time.monotonic() < deadline:
        msg = await listener.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if msg is not None:
            captured.append(msg["data"])
    await listener.aclose()
    releasing = [m for m in captured if json.loads(m)["event"] in ("ready", "phase_completed")]
    assert releasing and not await attacker.exists(f"{{{namespace}}}:instance:{INSTANCE}")

    follower = Coordinator(instance_settings(redis_server.url, namespace, INSTANCE, KEY),
                           role="follower")
    async with follower:
        waiter = asyncio.create_task(follower.wait_ready(20))
        for data in releasing:
            assert await publish(attacker, channel, data) == 1
        # The next life starts: its first (fresh) event comes after the replays, so once
        # the follower shows it, it has judged every replay.
        successor = Coordinator(instance_settings(redis_server.url, namespace, INSTANCE, KEY))
        async with successor:
            async with successor.phase("init"):
                await async_wait_until(lambda: follower.current_phase == "init", 10,
                                       what="the follower to see the new life's init")
                assert follower.state.value == "starting" and not waiter.done()
            await run_phases(successor, *PHASES)
            assert await asyncio.wait_for(waiter, 10)  # the new life's own ready does


@pytest.mark.parametrize(("owner_key", "follower_key"), [
    ("old,new", "old"), ("old,new", "new,old"), ("new,old", "old,new"), ("new", "new,old"),
], ids=["step-1", "step-1-2", "step-2", "step-3"])
async def test_keys_rotate_without_downtime(redis_server: RedisServer, namespace: str,
                                            owner_key: str, follower_key: str) -> None:
    """Rotation in three rolling steps (docs/security.md: Signing): ``old,new``, then ``new,old``,
    then ``new``; at every mix of neighbouring steps the owner's signatures verify."""
    owner = Coordinator(instance_settings(redis_server.url, namespace, INSTANCE, owner_key))
    follower = Coordinator(instance_settings(redis_server.url, namespace, INSTANCE, follower_key),
                           role="follower")
    async with owner, follower:
        waiter = asyncio.create_task(follower.wait_ready(20))
        await asyncio.sleep(0)
        await run_phases(owner, *PHASES)
        assert await asyncio.wait_for(waiter, 10)
        assert follower.drops.total == 0


async def test_running_unsigned_is_said_once_at_start(
        redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with Coordinator(instance_settings(redis_server.url, namespace, INSTANCE, KEY)):
        pass
    assert "unsigned" not in caplog.text
    unsigned = Coordinator(instance_settings(redis_server.url, namespace, INSTANCE, None))
    await unsigned.start()
    await unsigned.start()  # idempotent: said once
    await unsigned.stop()
    lines = [r for r in caplog.records if "running unsigned" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert repr(namespace) in lines[0].getMessage()


# -- ACL users, TLS, and what the logs may say -------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["redis", "rediss"])
async def test_acl_user_and_password_in_the_url_work_over_plain_and_tls(
        acl_redis: AclRedis, namespace: str, tls: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = acl_redis.url(tls=tls)
    anonymous = make_redis(acl_redis.server.url)
    with pytest.raises(redis.AuthenticationError):  # the default user really is off
        await anonymous.ping()
    await anonymous.aclose()
    async with Coordinator(instance_settings(url, namespace, INSTANCE, KEY)) as owner:
        assert owner.redis_ok
        async with owner.phase("init"):
            pass
        admin = redis.Redis.from_url(url, decode_responses=True)
        record = await admin.hgetall(f"{{{namespace}}}:instance:{INSTANCE}")
        assert record["phase"] == "init" and record["sig"]
        await admin.aclose()
    assert "coord:***@" in caplog.text  # the URL is logged, redacted
    assert ACL_PASSWORD not in caplog.text
    assert KEY not in caplog.text


async def test_a_wrong_password_degrades_to_local_gating_and_logs_no_secret(
        acl_redis: AclRedis, namespace: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + ACL_PASSWORD
    owner = Coordinator(instance_settings(acl_redis.url(password=wrong), namespace, INSTANCE,
                                      KEY))
    await owner.start()
    assert not owner.redis_ok
    async with owner.phase("init"):
        pass
    async with owner.phase("services"):
        pass
    assert owner.is_ready  # started and gates without Redis
    await owner.stop()
    assert "redis unavailable" in caplog.text
    for secret in (ACL_PASSWORD, wrong, KEY):
        assert secret not in caplog.text
    assert ACL_PASSWORD not in repr(owner.settings) and KEY not in repr(owner.settings)


async def test_tls_without_certificate_checks_connects_on_every_redis_py(
        acl_redis: AclRedis) -> None:
    """``ssl_cert_reqs=none`` asks for no check at all: the host name is not checked either
    (redis-py 6+ does so itself; on 5.x a host-name check beside it failed every
    connect, and the instance ran as if Redis were down)."""
    url = acl_redis.url(tls=True).replace("127.0.0.1", "localhost")
    url = url.split("?")[0] + "?ssl_cert_reqs=none"
    client = make_redis(url)
    try:
        assert await client.ping()
    finally:
        await client.aclose()


async def test_tls_refuses_a_certificate_for_another_host_name(acl_redis: AclRedis) -> None:
    """The host name is checked on every redis-py release (5.x did not by default: the
    coordinator asks for it, topology._checked). The server's certificate names
    127.0.0.1 only: reached as localhost, it is refused."""
    good = make_redis(acl_redis.url(tls=True))
    assert await good.ping()
    await good.aclose()
    wrong_name = make_redis(acl_redis.url(tls=True).replace("127.0.0.1", "localhost"))
    with pytest.raises(redis.ConnectionError) as refused:
        await wrong_name.ping()
    await wrong_name.aclose()
    chain = []  # redis-py 5.x words the error "Error 1 connecting...": the cause says why
    error: BaseException | None = refused.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert re.search(r"(?i)certificate|hostname|match", " ".join(chain)), chain
