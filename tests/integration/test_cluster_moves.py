"""Subscriptions that follow the namespace's slot when a Redis Cluster moves it.

A slot that moves ends its shard channels' subscriptions with a SUNSUBSCRIBE the client
never asked for; redis-py keeps the channel as subscribed and delivers nothing more.
The instance's link, the dashboard's feed and ``coordinator events`` each notice and
subscribe again where the slot is now."""

from __future__ import annotations

import asyncio

import pytest

from coordinator._compat import redispy
from coordinator._redis.client import make_redis
from coordinator._redis.topology import ClusterUnsupported
from coordinator.contract.keys import Keys
from coordinator.instance.coordinator import Coordinator
from coordinator.ops.dashboard import FleetFeed
from coordinator.settings import Settings
from harness.topologies import Cluster
from tests.support import (
    CliProcess,
    async_wait_until,
    cli_env,
    equals,
    event,
    publish,
    subscribers,
)

pytestmark = pytest.mark.redis


async def test_the_link_the_feed_and_the_cli_follow_a_slot_that_moves(
        cluster: Cluster, namespace: str) -> None:
    keys = Keys(namespace)
    client = make_redis(cluster.url, namespace=namespace)
    coord = Coordinator(Settings(redis_url=cluster.url, namespace=namespace,
                                 instance_id="moving", environment="test"))
    reader = make_redis(cluster.url, namespace=namespace)
    feed = FleetFeed(reader, keys, interval=60)
    cli = CliProcess("events", "--count", "2", env=cli_env(cluster.url, namespace))
    try:
        async with coord, feed.subscribe() as page:
            link, events = keys.instance_events("moving"), keys.events
            await async_wait_until(lambda: equals(subscribers(client, link), 1), 10,
                                   what="the instance's link subscribed")
            await async_wait_until(lambda: equals(subscribers(client, events), 2), 10,
                                   what="the feed and the CLI subscribed")
            assert await publish(client, events, event("before", "ready")) == 2

            to = (cluster.owner(namespace) + 1) % len(cluster.nodes)
            await asyncio.to_thread(cluster.move, namespace, to)
            await client.exists(keys.instances)  # MOVED: the test's own client follows too
            # Each subscribes again on the slot's new owner...
            await async_wait_until(lambda: equals(subscribers(client, link), 1), 10,
                                   what="the link subscribed again where the slot is")
            await async_wait_until(lambda: equals(subscribers(client, events), 2), 10,
                                   what="the feed and the CLI subscribed again")
            # ...and hears what is published there.
            assert await publish(client, link, b"not json") == 1
            await async_wait_until(lambda: coord.drops.counts["invalid_json"] == 1, 10,
                                   what="the link's drop of the junk")
            assert await publish(client, events, event("after", "ready")) == 2
            frames: list[bytes] = []
            async with asyncio.timeout(10):
                while not any(b'"after"' in f for f in frames):
                    frame = await page.get()
                    assert frame is not None
                    frames.append(frame)
        assert cli.wait(10) == 0, cli.stderr
        assert [line.split()[1] for line in cli.lines] == ["before", "after"], cli.lines
    finally:
        cli.kill()
        await reader.aclose()
        await client.aclose()


async def test_a_redis_py_without_sharded_pubsub_is_refused_a_cluster_in_one_line(
        cluster: Cluster, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py before 8.0 has no async SSUBSCRIBE: an instance there would publish where
    the fleet does not listen, so the cluster is refused, saying why (as an outage: the
    instance gates locally)."""
    monkeypatch.setattr(redispy, "SHARDED_PUBSUB", False)
    client = make_redis(cluster.url, namespace=namespace)
    try:
        with pytest.raises(ClusterUnsupported, match=r"needs redis-py 8\.0 or later"):
            await client.ping()
    finally:
        await client.aclose()
