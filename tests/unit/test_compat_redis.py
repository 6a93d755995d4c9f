"""coordinator._compat.redispy against the redis-py installed: each private name it uses
is there, the connect hook wraps the method redis-py reaches, and outside the tested
releases the subscription falls back to redis-py's own parser."""

from __future__ import annotations

import logging

import pytest
import redis
from redis.asyncio.connection import Connection

from coordinator._compat import redispy
from coordinator._redis import pubsub, topology


def test_versions_are_read_as_numbers() -> None:
    assert redispy.version("8.2.0") == (8, 2, 0)
    assert redispy.version("5.0.1") == (5, 0, 1)
    assert redispy.version("8.0.0b1") == (8, 0, 0)
    assert redispy.version("10.1") == (10, 1)
    assert redispy.within_tested((5, 0, 2)) and redispy.within_tested((8, 9, 9))
    assert not redispy.within_tested((5, 0, 1)) and not redispy.within_tested((9, 0))


def test_the_installed_redis_py_is_one_the_suite_ran_and_its_internals_are_there() -> None:
    # CI's legs install the floor, the lock and the newest release within the pin: each
    # must be inside TESTED, so the discarding parser is the one in use.
    assert redispy.within_tested(redispy.INSTALLED), redis.__version__
    assert redispy.subscription_parser("3") is not None
    assert redispy.subscription_parser("2") is not None


def test_the_connect_hook_wraps_the_method_redis_py_reaches() -> None:
    wrapped = "connect_check_health" if redispy.INSTALLED >= (6,) else "connect"
    assert hasattr(Connection, wrapped)
    assert wrapped in vars(redispy.ConnectHook)
    assert topology.RoutedConnection.__mro__.index(redispy.ConnectHook) \
        < topology.RoutedConnection.__mro__.index(Connection)


async def test_the_hook_runs_before_a_connect_and_after_a_failed_one() -> None:
    seen: list[str] = []

    class Probe(redispy.ConnectHook, Connection):
        async def before_connect(self) -> None:
            seen.append("before")
            self.host, self.port = "127.0.0.1", 1  # nothing listens on port 1

        def connect_failed(self) -> None:
            seen.append("failed")

    conn = Probe(host="unused", port=0, socket_connect_timeout=1)
    with pytest.raises(redis.ConnectionError):
        await conn.connect()
    assert seen == ["before", "failed"]


def test_the_default_protocol_is_resp3_from_8_0() -> None:
    assert redispy.protocol_of({}) == ("3" if redispy.INSTALLED >= (8,) else "2")
    assert redispy.protocol_of({"protocol": 2}) == "2"
    assert redispy.protocol_of({"protocol": "3"}) == "3"


def test_sharded_pubsub_is_there_from_8_0() -> None:
    assert (redispy.INSTALLED >= (8,)) == redispy.SHARDED_PUBSUB


def test_outside_the_tested_releases_subscriptions_use_redis_pys_parser(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(redispy, "_PARSERS", None)
    monkeypatch.setattr(redispy, "_warned", False)
    client = redis.asyncio.Redis()
    with caplog.at_level(logging.WARNING, "coordinator.compat"):
        bounded = pubsub.bounded_pubsub(client)
        pubsub.bounded_pubsub(client)
    assert "parser_class" not in bounded.connection_pool.connection_kwargs
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "outside the releases tested" in caplog.records[0].message


def test_within_them_subscriptions_discard_oversized_replies_unread() -> None:
    client = redis.asyncio.Redis()
    protocol = redispy.protocol_of(client.connection_pool.connection_kwargs)
    bounded = pubsub.bounded_pubsub(client)
    assert bounded.connection_pool.connection_kwargs["parser_class"] \
        is redispy.subscription_parser(protocol)


def test_a_subscription_speaks_resp2_where_redis_py_cannot_subscribe_over_resp3() -> None:
    assert (redispy.INSTALLED >= (6, 2)) == redispy.RESP3_PUBSUB
    expected = "3" if redispy.RESP3_PUBSUB else "2"
    assert redispy.protocol_of(redispy.subscription_options({"protocol": 3})) == expected
    assert redispy.protocol_of(redispy.subscription_options({"protocol": 2})) == "2"
