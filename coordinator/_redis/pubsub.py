"""Subscriptions whose connection never holds a message larger than messages accept.

redis-py reads a whole bulk string before anyone can look at its size: a 20 MB publish
on a channel an instance follows is read in full (and copied) on its event loop, to be
dropped by :func:`messages.decode` as oversized afterwards. A subscription made here
gets a connection of its own whose reply parser reads a bulk string longer than the
limit off the socket in chunks of :data:`CHUNK` bytes and throws each away at once,
handing over :class:`~coordinator.messages.Oversized` (its length, no content) in its
place; :func:`messages.decode` counts that as an ``oversized`` drop.

The parser is redis-py's own pure-Python one (RESP3, or RESP2 when the URL asks for
``protocol=2``) with one method changed, and the subscription's connection uses it
whether or not hiredis is installed; every other connection keeps redis-py's default
(hiredis when installed). It relies on redis-py's parser internals (``_read``,
``_stream``, ``_pos``), checked by tests/integration/test_hostile_input.py for the
redis-py version installed.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis
from redis._parsers import _AsyncRESP2Parser, _AsyncRESP3Parser
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

from coordinator._redis import topology
from coordinator.contract.events import MAX_MESSAGE_BYTES, Oversized

CHUNK = 64 << 10  # bytes read and discarded at a time


class _Discarding:
    """Mixin for redis-py's async RESP parsers: a bulk string over ``limit`` bytes is
    discarded as it is read, never held whole.

    A read interrupted by a timeout is parsed again from the start of the reply on the
    next call (redis-py keeps what it had read in its buffer); the bytes a discard has
    already consumed are not in that buffer, so ``_skips`` remembers, by position in the
    reply, how many are still to go, and the replay resumes the discard instead of
    reading those bytes as the next reply. It is cleared with the buffer, once a reply
    is complete.
    """

    limit = MAX_MESSAGE_BYTES
    _pos: int
    _stream: Any

    def __init__(self, socket_read_size: int) -> None:
        super().__init__(socket_read_size)  # type: ignore[call-arg]
        self._skips: dict[int, int] = {}

    def _clear(self) -> None:
        super()._clear()  # type: ignore[misc]
        self._skips = {}

    async def _read(self, length: int) -> bytes:
        if length <= self.limit:
            return await super()._read(length)  # type: ignore[misc, no-any-return]
        at = self._pos  # the discarded bytes never enter the buffer: _pos stays
        left = self._skips.get(at, length + 2)  # + the CRLF that ends a bulk string
        while left:
            chunk = await self._stream.read(min(left, CHUNK))
            if not chunk:
                raise RedisConnectionError("Connection closed by server.")
            left -= len(chunk)
            self._skips[at] = left
        return Oversized(length)


class DiscardingRESP3Parser(_Discarding, _AsyncRESP3Parser):
    pass


class DiscardingRESP2Parser(_Discarding, _AsyncRESP2Parser):
    pass


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
                and response[1] not in self.pending_unsubscribe_shard_channels:
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
    options = dict(pool.connection_kwargs)
    protocol = str(options.get("protocol") or 3)
    options["parser_class"] = DiscardingRESP2Parser if protocol == "2" else DiscardingRESP3Parser
    own = redis.ConnectionPool(connection_class=pool.connection_class, max_connections=1,
                               **options)
    bounded = BoundedPubSub(own)  # readers ask for (un)subscribe confirmations or not
    bounded.source = client
    return bounded
