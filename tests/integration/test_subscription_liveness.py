"""The long-lived subscription (coordinator._redis.subscription) on real servers: it
hears its channel over RESP2 and RESP3 on every redis-py CI runs (before 6.2 redis-py's
async PubSub hears nothing over RESP3: the subscription speaks RESP2 there), and it
notices a server that hangs, which nothing else on a subscribed connection would."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis

from coordinator._redis import subscription
from coordinator._redis.client import make_redis
from coordinator._redis.subscription import Subscription
from harness.topologies import Topology
from tests.support import RedisServer, async_wait_until, publish

pytestmark = pytest.mark.redis


class Seen:
    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.ups = 0
        self.errors: list[BaseException] = []

    async def up(self) -> None:
        self.ups += 1


@contextlib.asynccontextmanager
async def following(client: redis.Redis, channel: str) -> AsyncIterator[Seen]:
    """A Subscription to ``channel`` running until the block ends; what it saw."""
    seen = Seen()
    sub = Subscription(client, [channel], on_message=lambda _c, d: seen.messages.append(d),
                       on_up=seen.up, on_error=seen.errors.append)
    task = asyncio.create_task(sub.run())
    try:
        await async_wait_until(lambda: seen.ups == 1, 10, what="the subscription confirmed")
        yield seen
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()


def with_query(url: str, option: str) -> str:
    return url + ("&" if "?" in url else "?") + option


@pytest.mark.matrix
@pytest.mark.parametrize("protocol", ["2", "3"])
async def test_a_subscription_hears_its_channel_over_either_protocol(
        redis_server: Topology, namespace: str, protocol: str) -> None:
    url = with_query(redis_server.url, f"protocol={protocol}")
    channel = f"{{{namespace}}}:events"
    async with following(make_redis(url, namespace=namespace), channel) as seen:
        publisher = make_redis(redis_server.url, namespace=namespace)
        try:
            await publish(publisher, channel, b"hello")
        finally:
            await publisher.aclose()
        await async_wait_until(lambda: seen.messages == [b"hello"], 10, what="the message")
        assert seen.errors == []


async def test_a_hung_server_is_noticed_and_followed_again_once_it_answers(
        own_redis: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subscription, "QUIET", 0.5)
    monkeypatch.setattr(subscription, "PONG_TIMEOUT", 0.5)
    client = make_redis(own_redis.url, namespace=namespace, health_check_interval=0)
    channel = f"{{{namespace}}}:events"
    async with following(client, channel) as seen:
        own_redis.freeze()
        try:
            await async_wait_until(lambda: seen.errors, 15, what="the hang noticed")
        finally:
            own_redis.thaw()
        assert isinstance(seen.errors[0], TimeoutError), seen.errors
        assert "no PONG" in str(seen.errors[0])
        await async_wait_until(lambda: seen.ups >= 2, 15, what="subscribed again")
        await client.publish(channel, b"after")
        await async_wait_until(lambda: b"after" in seen.messages, 10, what="heard again")
