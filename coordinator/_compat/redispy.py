"""redis-py's internals, each behind a name of ours and checked against the releases the
suite ran it with (:data:`TESTED`: 5.0.2 up to, not including, 9).

What is used, and what happens outside the tested range or where a name is missing:

- The subscription's reply parser (:func:`subscription_parser`) subclasses redis-py's
  pure-Python async RESP parsers (``redis._parsers._AsyncRESP2Parser`` and
  ``_AsyncRESP3Parser``) and overrides ``_read`` and ``_clear``, reading ``_pos`` and
  ``_stream``: a bulk string over the limit is discarded as it is read. Outside the
  range: none (redis-py's default parser), and an oversized message is read whole and
  dropped by ``events.decode``'s size check instead, as before this parser existed.
- The routed connection's connect hook (:class:`ConnectHook`): redis-py 6.0 and later
  reach every (re)connect through ``Connection.connect_check_health``, 5.x through
  ``Connection.connect``; the hook wraps whichever the installed release has.
- Sharded pub/sub (:data:`SHARDED_PUBSUB`, :func:`pending_shard_unsubscribes`): the
  async ``PubSub.ssubscribe`` appeared in 8.0, with ``pending_unsubscribe_shard_channels``.
  A cluster needs it (every instance of a namespace must publish and subscribe alike):
  on an older redis-py, topology refuses a cluster with a one-line error.

tests/unit/test_compat_redis.py checks each against the installed release; CI runs the
suite on the floor (5.0.2), on the lock and on the newest release (bin/test-versions).
"""

from __future__ import annotations

import inspect
import logging
import re
from typing import Any

import redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import AbstractConnection, Connection
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger("coordinator.compat")

TESTED = ((5, 0, 2), (9,))  # [floor, ceiling): the releases the suite has run


def version(text: str) -> tuple[int, ...]:
    """``"8.2.0"`` -> ``(8, 2, 0)``; a pre-release's suffix is ignored (``"8.0.0b1"``)."""
    return tuple(int(m) for m in re.findall(r"\d+", text.split("+")[0])[:3])


INSTALLED_TEXT: str = redis.__version__
INSTALLED = version(INSTALLED_TEXT)


def within_tested(installed: tuple[int, ...]) -> bool:
    """Whether ``installed`` is within the range the suite ran."""
    return TESTED[0] <= installed < TESTED[1]


SHARDED_PUBSUB = hasattr(PubSub, "ssubscribe")
# Before 6.2 an async PubSub on a RESP3 connection delivers nothing: 5.x prints each push
# ("Push response: ...") and returns None, 6.0 and 6.1 drop them.
RESP3_PUBSUB = INSTALLED >= (6, 2)


def protocol_of(connection_kwargs: dict[str, Any]) -> str:
    """The RESP version ("2" or "3") a connection made with ``connection_kwargs`` speaks:
    the one asked for, else redis-py's default (RESP2 up to 7.x; 8.0's default, None,
    asks for RESP3)."""
    asked = connection_kwargs.get("protocol")
    if asked is None:
        asked = inspect.signature(AbstractConnection.__init__).parameters["protocol"].default
    return "2" if str(asked) == "2" else "3"


def subscription_options(connection_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The options of a subscription's connection: ``connection_kwargs``, speaking RESP2
    where the installed redis-py cannot subscribe over RESP3 (:data:`RESP3_PUBSUB`)."""
    if not RESP3_PUBSUB and protocol_of(connection_kwargs) == "3":
        return {**connection_kwargs, "protocol": 2}
    return dict(connection_kwargs)


def pending_shard_unsubscribes(pubsub: PubSub) -> Any:
    """The shard channels ``pubsub`` itself asked to leave (redis-py 8.0+); a
    SUNSUBSCRIBE for any other was the server's (its slot moved)."""
    return getattr(pubsub, "pending_unsubscribe_shard_channels", ())


# -- the connect hook ------------------------------------------------------------------

_CONNECT = "connect_check_health" if hasattr(Connection, "connect_check_health") \
    else "connect"


class ConnectHook:
    """Mixin for a redis-py async ``Connection``: :meth:`before_connect` runs before
    every (re)connect and :meth:`connect_failed` after one that failed, however
    redis-py gets to the connect."""

    async def before_connect(self) -> None:
        """Called before each connect (not when already connected)."""

    def connect_failed(self) -> None:
        """Called when a connect raised; the error propagates."""

    async def _hooked(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if not self.is_connected:  # type: ignore[attr-defined]
            await self.before_connect()
        try:
            return await getattr(super(), method)(*args, **kwargs)
        except (TimeoutError, redis.RedisError, OSError):
            self.connect_failed()
            raise

    if _CONNECT == "connect_check_health":
        async def connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
            return await self._hooked("connect_check_health", *args, **kwargs)
    else:  # redis-py 5.x
        async def connect(self) -> Any:
            return await self._hooked("connect")


# -- the subscription's parser -----------------------------------------------------------

CHUNK = 64 << 10  # bytes read and discarded at a time


def _discarding_parsers() -> tuple[type, type] | None:
    """The discarding RESP3 and RESP2 parsers, or None where redis-py's parser internals
    are not the ones tested."""
    if not within_tested(INSTALLED):
        return None
    try:
        from redis._parsers import _AsyncRESP2Parser, _AsyncRESP3Parser
        from redis._parsers.base import _AsyncRESPBase
    except ImportError:
        return None
    if not {"_pos", "_buffer", "_chunks"} <= set(_AsyncRESPBase.__slots__) or not all(
            hasattr(_AsyncRESPBase, name) for name in ("_read", "_clear")):
        return None
    from coordinator.contract.events import MAX_MESSAGE_BYTES, Oversized

    class Discarding:
        """Mixin for redis-py's async RESP parsers: a bulk string over ``limit`` bytes
        is discarded as it is read, never held whole.

        A read interrupted by a timeout is parsed again from the start of the reply on
        the next call (redis-py keeps what it had read in its buffer); the bytes a
        discard has already consumed are not in that buffer, so ``_skips`` remembers, by
        position in the reply, how many are still to go, and the replay resumes the
        discard instead of reading those bytes as the next reply. It is cleared with the
        buffer, once a reply is complete.
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

    class DiscardingRESP3Parser(Discarding, _AsyncRESP3Parser):
        pass

    class DiscardingRESP2Parser(Discarding, _AsyncRESP2Parser):
        pass

    return DiscardingRESP3Parser, DiscardingRESP2Parser


_PARSERS = _discarding_parsers()
_warned = False


def subscription_parser(protocol: str) -> type | None:
    """The parser class for a subscription's connection (RESP ``protocol`` "2" or "3"):
    one that discards oversized bulk strings unread, or None (redis-py's default) where
    the installed redis-py is not one the suite ran (logged once)."""
    global _warned
    if _PARSERS is None:
        if not _warned:
            _warned = True
            log.warning("redis-py %s is outside the releases tested (%s to before %s): "
                        "subscriptions use its own parser, and an oversized message is "
                        "read whole before it is dropped", redis.__version__,
                        ".".join(map(str, TESTED[0])), ".".join(map(str, TESTED[1])))
        return None
    return _PARSERS[1] if protocol == "2" else _PARSERS[0]
