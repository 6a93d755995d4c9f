"""The long-lived readers' pub/sub loop: subscribe, deliver, and on any failure
subscribe again, for as long as the process runs.

The coordinator's Redis link (its instance channel) and the dashboard feed
(``N:events``) use it. The ``coordinator`` command's ``events`` and ``fleet --watch``
follow ``N:events`` for one command's life instead, with loops of their own that end on
an error (``events``) or show it in place of the table (``--watch``).

Each delivered message goes to a synchronous callback; a callback that raises is logged
(at most once per ``LOG_INTERVAL``) and the loop goes on, so no message, however
malformed, can take the link down.

A subscription that hears nothing for :data:`QUIET` seconds PINGs the server on its own
connection; no PONG within :data:`PONG_TIMEOUT` means a hung server or a silent
partition (nothing else on a subscribed connection would ever notice: it only reads),
and the round ends like any other failure, to subscribe again: a dead link is noticed
within QUIET + PONG_TIMEOUT + POLL seconds (9 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as redis

from coordinator._backoff import RECONNECT, Backoff
from coordinator._redis.client import REDIS_ERRORS
from coordinator._redis.pubsub import bounded_pubsub

log = logging.getLogger("coordinator.link")
POLL = 1.0  # seconds get_message waits before the loop checks that it should go on
CONFIRM_TIMEOUT = 5.0  # seconds the server may take to confirm a (re)subscribe
QUIET = 5.0  # seconds without a message before the subscription PINGs the server
PONG_TIMEOUT = 3.0  # seconds the PONG may take: later, the link is hung or cut
LIVENESS_TOKEN = b"coordinator-liveness"
LOG_INTERVAL = 10.0

OnMessage = Callable[[str, Any], None]


def _nothing(_exc: BaseException) -> None:
    return None


class Subscription:
    """Follows ``channels`` until cancelled, reconnecting with :data:`RECONNECT` backoff.

    ``on_up`` runs after every successful (re)subscribe, once the server has confirmed
    it, before any message is delivered: the place to re-read state that messages may
    have been lost for (a read done before the confirmation could miss a message
    published between the read and the subscribe, for as long as the next one).
    ``on_error`` is told of every failure that ends a round (a Redis error, or an error
    of ``on_up``). ``healthy`` is checked between messages: when it turns false (another
    task saw the link fail) the round ends and the loop subscribes again.
    """

    def __init__(self, client: redis.Redis, channels: Sequence[str], *,
                 on_message: OnMessage,
                 on_up: Callable[[], Awaitable[None]] | None = None,
                 on_error: Callable[[BaseException], None] = _nothing,
                 healthy: Callable[[], bool] = lambda: True,
                 backoff: Backoff = RECONNECT, name: str = "subscription") -> None:
        self.client = client
        self.channels = tuple(channels)
        self.on_message = on_message
        self.on_up = on_up
        self.on_error = on_error
        self.healthy = healthy
        self.backoff = backoff
        self.name = name
        self.callback_errors = 0
        self._last_log = -LOG_INTERVAL

    async def run(self) -> None:
        attempt = 0
        while True:
            pubsub = bounded_pubsub(self.client)  # oversized messages are discarded unread
            try:
                await pubsub.follow(*self.channels)
                await self._confirmed(pubsub)
                if self.on_up is not None:
                    await self.on_up()
                attempt = 0
                await self._follow(pubsub)
            except REDIS_ERRORS as exc:
                self.on_error(exc)
            except Exception as exc:  # bad data in Redis (or a bug) must not end the link
                log.exception("%s: unexpected error; subscribing again", self.name)
                self.on_error(exc)
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await asyncio.shield(pubsub.aclose())
            attempt += 1
            await asyncio.sleep(self.backoff.delay(attempt))

    async def _follow(self, pubsub: Any) -> None:
        """Deliver messages until the link turns unhealthy, the server ends the
        subscription (a slot that moves), or a PING goes unanswered (TimeoutError)."""
        heard = time.monotonic()
        pinged: float | None = None
        while self.healthy() and pubsub.following:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL)
            now = time.monotonic()
            if msg is not None:
                heard = now
                if msg.get("type") == "pong":
                    pinged = None
                    continue
                self._deliver(msg)
            elif pinged is not None and now - pinged >= PONG_TIMEOUT:
                raise TimeoutError(f"no PONG on the subscription within {PONG_TIMEOUT:g} s: "
                                   "the server is hung or unreachable")
            if pinged is None and now - heard >= QUIET:
                await pubsub.ping(LIVENESS_TOKEN)
                pinged = now

    async def _confirmed(self, pubsub: Any) -> None:
        """Wait until the server has confirmed every channel (TimeoutError after
        CONFIRM_TIMEOUT: the round ends and the loop subscribes again)."""
        pending = len(self.channels)
        async with asyncio.timeout(CONFIRM_TIMEOUT):
            while pending:
                msg = await pubsub.get_message(ignore_subscribe_messages=False, timeout=POLL)
                if msg is None:
                    continue
                if msg.get("type") in ("subscribe", "ssubscribe"):
                    pending -= 1
                else:  # on the same connection a message cannot come first; if it does
                    self._deliver(msg)

    def _deliver(self, msg: dict[str, Any]) -> None:
        channel = msg.get("channel")
        try:
            self.on_message(channel.decode(errors="replace") if isinstance(channel, bytes)
                            else str(channel), msg.get("data"))
        except Exception:
            self.callback_errors += 1
            now = time.monotonic()
            if now - self._last_log >= LOG_INTERVAL:
                self._last_log = now
                log.exception("%s: a message handler failed (%d so far); the link goes on",
                              self.name, self.callback_errors)
