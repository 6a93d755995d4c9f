"""Subscriptions whose connection never holds a message larger than messages accept.

redis-py reads a whole bulk string before anyone can look at its size: a 20 MB publish
on a channel an instance follows is read in full (and copied) on its event loop, to be
dropped by :func:`messages.decode` as oversized afterwards. A subscription made here
gets a connection of its own whose reply parser reads a bulk string longer than the
limit off the socket in chunks and throws each away at once, handing over
:class:`~coordinator.contract.events.Oversized` (its length, no content) in its place;
``events.decode`` counts that as an ``oversized`` drop.

The parser is redis-py's own pure-Python one (RESP3, or RESP2 when the URL asks for
``protocol=2``) with one method changed, and the subscription's connection uses it
whether or not hiredis is installed; every other connection keeps redis-py's default
(hiredis when installed). It relies on redis-py's parser internals, so it lives in
coordinator._compat.redispy, which falls back to redis-py's own parser (and the drop
after the read) on a release the suite has not run.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis
from redis.asyncio.client import PubSub

from coordinator._compat import redispy
from coordinator._redis import topology


class BoundedPubSub(PubSub):
    """A PubSub on a connection pool of its own, closed with it."""

    source: redis.Redis  # the client whose options and topology it shares
    ended_by_server = False  # the server ended a sharded subscription (its slot moved)

    @property
    def following(self) -> bool:
        """Subscribed, and not unsubscribed by the server: a slot that moves ends its
        shard channels' subscriptions with a SUNSUBSCRIBE nobody asked for, which
        redis-py records nowhere (the channel stays in ``shard_channels``)."""
        return self.subscribed and not self.ended_by_server

    async def handle_message(self, response: Any,
                             ignore_subscribe_messages: bool = False) -> Any:
        if isinstance(response, list) and response and response[0] in (
                b"sunsubscribe", "sunsubscribe") \
                and response[1] not in redispy.pending_shard_unsubscribes(self):
            self.ended_by_server = True
            pool = self.source.connection_pool
            if isinstance(pool, topology.TopologyPool):
                pool.forget()  # ask the cluster again where the slot is
        return await super().handle_message(  # type: ignore[no-untyped-call]
            response, ignore_subscribe_messages)

    async def follow(self, *channels: str) -> None:
        """Subscribe to ``channels``: with SSUBSCRIBE where the topology shards channels
        (a cluster that has it), with SUBSCRIBE elsewhere."""
        if (await topology.resolve(self.source)).sharded:
            await self.ssubscribe(*channels)
        else:
            await self.subscribe(*channels)

    async def aclose(self) -> None:
        try:
            await super().aclose()  # type: ignore[no-untyped-call]
        finally:
            await self.connection_pool.disconnect()


def bounded_pubsub(client: redis.Redis) -> BoundedPubSub:
    """A PubSub like ``client.pubsub()``, on a connection
    made with the client's own options (URL, credentials, TLS, timeouts) whose parser
    discards any bulk string over :data:`MAX_MESSAGE_BYTES`. Close it with ``aclose()``.
    """
    pool = client.connection_pool
    options = redispy.subscription_options(pool.connection_kwargs)
    protocol = redispy.protocol_of(options)
    parser = redispy.subscription_parser(protocol)
    if parser is not None:
        options["parser_class"] = parser
    own = redis.ConnectionPool(connection_class=pool.connection_class, max_connections=1,
                               **options)
    bounded = BoundedPubSub(own)  # readers ask for (un)subscribe confirmations or not
    bounded.source = client
    return bounded
