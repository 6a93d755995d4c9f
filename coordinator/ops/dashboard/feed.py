"""The fleet as a stream of Server-Sent Events frames for the dashboard.

One subscription to ``N:events`` and one snapshot ticker are shared by every open page
and fanned out to a bounded queue per page. Events show transitions at once; the full
snapshot (``registry.fleet_snapshot``, the view the CLI prints) follows every interval and
after each burst of events, so a lost event, a dropped frame or a restart corrects itself.
The shared tasks run only while a page is open: the first page starts them and the last
one to leave cancels and awaits them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as redis

from coordinator._redis.client import REDIS_ERRORS
from coordinator._redis.subscription import Subscription
from coordinator._tasks import TaskSet
from coordinator.contract.events import DropCounter, decode_event
from coordinator.contract.keys import Keys
from coordinator.contract.signing import Keyring
from coordinator.exceptions import InvalidMessage
from coordinator.fleet.view import FleetReader

SNAPSHOT_INTERVAL = 1.0
EVENT_SETTLE = 0.25  # after an event, wait this long so that a burst costs one snapshot
PAGE_QUEUE_SIZE = 64  # frames
PAGE_QUEUE_BYTES = 4 << 20  # and bytes: a snapshot of 1,000 instances is about 0.5 MB
MAX_PAGES = 16  # open streams at once; more are turned away (503 + Retry-After)

log = logging.getLogger("coordinator.dashboard")

Frame = bytes | None  # None ends a page's stream


def sse_frame(kind: str, body: Any) -> bytes:
    """One Server-Sent Event. JSON escapes every newline, so ``data`` stays one line."""
    return f"event: {kind}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


class PageQueue(asyncio.Queue[Frame]):
    """One page's frames, counting the bytes they hold (through the hooks asyncio.Queue
    gives its subclasses)."""

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self.bytes = 0

    def _put(self, item: Frame) -> None:
        super()._put(item)
        self.bytes += len(item or b"")

    def _get(self) -> Frame:
        item: Frame = super()._get()
        self.bytes -= len(item or b"")
        return item


class FleetFeed:
    """The dashboard's source: fleet snapshots and live events, fanned out to every open
    page through a bounded queue each.

    ``client`` and ``keys`` say where the fleet is; with ``signing_key`` unsigned and
    forged events are dropped (and counted in ``drops``) as everywhere else. A page that
    reads too slowly loses its oldest frames (counted in ``lagged``) rather than growing
    a buffer: the next snapshot supersedes them.
    """

    def __init__(self, client: redis.Redis, keys: Keys, *,
                 signing_key: str | None = None, interval: float = SNAPSHOT_INTERVAL,
                 queue_size: int = PAGE_QUEUE_SIZE, max_pages: int = MAX_PAGES) -> None:
        self.client = client
        self.keys = keys
        self.keyring = Keyring.of(signing_key, keys.namespace)
        # Remembers what this user may not do; with a key, lists only verified records.
        self.reader = FleetReader(client, keys, keyring=self.keyring)
        self.interval = interval
        self.queue_size = queue_size
        self.max_pages = max_pages  # each open page may hold PAGE_QUEUE_BYTES
        self.turned_away = 0
        self.drops = DropCounter()
        self.lagged = 0  # frames a slow page lost (a later snapshot supersedes them)
        self.closed = False
        self._pages: set[PageQueue] = set()
        self._tasks = TaskSet("dashboard", log)
        self._refresh = asyncio.Event()

    @property
    def pages(self) -> int:
        return len(self._pages)

    @property
    def full(self) -> bool:
        return len(self._pages) >= self.max_pages

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[PageQueue]:
        """A queue of frames for one page: a snapshot soon, then events and snapshots."""
        queue = PageQueue(self.queue_size)
        if self.closed:
            queue.put_nowait(None)
        self._pages.add(queue)
        if not self._tasks and not self.closed:
            self._tasks.spawn(self._snapshots(), "snapshots")
            self._tasks.spawn(self._events().run(), "events")
        self._refresh.set()
        try:
            yield queue
        finally:
            # No await before the decision: a page arriving meanwhile starts fresh tasks.
            self._pages.discard(queue)
            if not self._pages:
                await self._tasks.cancel()

    def close(self) -> None:
        """End every page's stream (the server is going away); later pages get none."""
        self.closed = True
        for queue in self._pages:
            self._offer(queue, None)

    def broadcast(self, frame: bytes) -> None:
        """Send one frame to every open page."""
        if self.closed:
            return
        for queue in self._pages:
            self._offer(queue, frame)

    def _offer(self, queue: PageQueue, frame: Frame) -> None:
        # A page that falls behind loses its oldest frames: the next snapshot carries what
        # they said. Bounded in frames and in bytes (snapshots of a large fleet are big).
        while not queue.empty() and (queue.full() or
                                     queue.bytes + len(frame or b"") > PAGE_QUEUE_BYTES):
            queue.get_nowait()
            self.lagged += 1
        queue.put_nowait(frame)

    async def snapshot_frame(self) -> bytes:
        try:
            doc = await self.reader.snapshot()
        except REDIS_ERRORS as exc:
            return sse_frame("status", {"redis": "down", "error": type(exc).__name__})
        except Exception as exc:  # bad data in Redis must not end the snapshot loop
            log.exception("dashboard snapshot failed")
            return sse_frame("status", {"redis": "ok", "error": type(exc).__name__})
        return sse_frame("snapshot", doc)

    async def _snapshots(self) -> None:
        while True:
            self._refresh.clear()
            self.broadcast(await self.snapshot_frame())
            try:
                async with asyncio.timeout(self.interval):
                    await self._refresh.wait()
            except TimeoutError:
                continue
            await asyncio.sleep(EVENT_SETTLE)

    def _events(self) -> Subscription:
        # A Redis error needs no word here: the snapshot ticker tells the pages.
        return Subscription(self.client, [self.keys.events], on_message=self._on_event,
                            name="dashboard events")

    def _on_event(self, _channel: str, data: Any) -> None:
        try:
            msg = decode_event(data if isinstance(data, (bytes, str)) else b"",
                                  keyring=self.keyring)
        except InvalidMessage as exc:
            self.drops.drop(exc, self.keys.events)
            return
        self.broadcast(sse_frame("event", msg.to_dict()))
        self._refresh.set()
