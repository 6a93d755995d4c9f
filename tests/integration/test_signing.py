"""Redis credentials and signing keys: ACL users and TLS work, a wrong password degrades
to local gating, and no log line carries the key or the password.
(tests/e2e/test_signing.py: forged events against a follower's held connections.)
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis.asyncio as redis

from coordinator import Coordinator, Settings
from coordinator.connections import make_redis
from tests.support import ACL_PASSWORD, AclRedis

pytestmark = pytest.mark.redis

KEY = "k3y-never-in-any-log-0d5e"
PASSWORD = ACL_PASSWORD
INSTANCE = "signed-1"


def settings(url: str, namespace: str, **kw: Any) -> Settings:
    return Settings(redis_url=url, namespace=namespace, instance_id=INSTANCE,
                    phases=("init", "services"), ready_phase="services", environment="test",
                    **kw)


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


