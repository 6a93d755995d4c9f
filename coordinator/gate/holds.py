"""The local hold queue: bounded in count and in time, released first in, first out.

Each held handshake owns a future. ``release_all`` resolves them in arrival order in one
pass, so every held coroutine resumes in the same loop iteration; a timer fires at the
earliest deadline, so an expired hold is rejected on time, not when the next connection
happens to arrive.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from coordinator.contract.documents import QueueStatus
from coordinator.contract.rejection import Reason


class _Admit(enum.Enum):
    ADMIT = "admit"


ADMIT: Final = _Admit.ADMIT
# How a hold ends: released (ADMIT), or refused for a reason (timeout, failed, draining,
# or gave_up when the client left).
HoldEnd = Literal[_Admit.ADMIT] | Reason


@dataclass(eq=False)
class Hold:
    """One held handshake: its connection id, when it arrived, its deadline (on the
    queue's clock), and the future that says how the hold ended."""

    conn: int
    enqueued_at: float
    deadline: float
    future: asyncio.Future[HoldEnd] = field(repr=False)

    @property
    def done(self) -> bool:
        return self.future.done()


class HoldQueue:
    """The handshakes one process holds: at most ``max_size`` at once, each until its
    deadline, released together in arrival order.

    Every hold owns a future; nothing polls. One timer, armed for the earliest deadline,
    rejects expired holds with ``timeout`` on time even when no other connection arrives.
    """

    def __init__(self, max_size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_size = max_size
        self.clock = clock
        self._holds: dict[int, Hold] = {}  # insertion order is arrival order
        self._deadlines: list[tuple[float, int]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._ids = itertools.count(1)
        self.held_total = 0  # handshakes actually held (the gate counts them: a slot whose
        # lease the fleet refused was never a hold)
        self.released_total = 0

    def __len__(self) -> int:
        return len(self._holds)

    @property
    def has_room(self) -> bool:
        return len(self._holds) < self.max_size

    def next_conn_id(self) -> int:
        return next(self._ids)

    def hold(self, timeout: float, conn: int | None = None) -> Hold | None:
        """Queue a handshake for at most ``timeout`` seconds; None when full."""
        if not self.has_room:
            return None
        loop = asyncio.get_running_loop()
        now = self.clock()
        entry = Hold(conn if conn is not None else self.next_conn_id(), now, now + timeout,
                     loop.create_future())
        self._holds[entry.conn] = entry
        heapq.heappush(self._deadlines, (entry.deadline, entry.conn))
        self._arm(loop)
        return entry

    def forget(self, entry: Hold) -> None:
        """The client gave up (or the gate is done with it): free its slot."""
        self._holds.pop(entry.conn, None)
        if not entry.future.done():
            entry.future.cancel()

    def release_all(self) -> int:
        """Resolve every held future with ADMIT, oldest first."""
        return self.release(len(self._holds))

    def release(self, count: int) -> int:
        """Resolve the ``count`` oldest held futures with ADMIT (the pacer's release)."""
        holds = list(itertools.islice(self._holds.values(), count))
        for entry in holds:
            del self._holds[entry.conn]
            if not entry.future.done():
                entry.future.set_result(ADMIT)
        self.released_total += len(holds)
        if not self._holds:
            self._disarm()
        return len(holds)

    def reject_all(self, reason: Reason) -> int:
        holds = list(self._holds.values())
        self._holds.clear()
        for entry in holds:
            self._reject(entry, reason)
        self._disarm()
        return len(holds)

    def oldest_wait(self) -> float:
        for entry in self._holds.values():
            return max(0.0, self.clock() - entry.enqueued_at)
        return 0.0

    def status(self) -> QueueStatus:
        return QueueStatus(depth=len(self._holds), max=self.max_size,
                           oldest_wait=round(self.oldest_wait(), 3),
                           held_total=self.held_total, released_total=self.released_total)

    # -- expiry ---------------------------------------------------------------------

    def _reject(self, entry: Hold, reason: Reason) -> None:
        if not entry.future.done():
            entry.future.set_result(reason)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._deadlines and self._deadlines[0][1] not in self._holds:
            heapq.heappop(self._deadlines)
        if not self._deadlines:
            self._disarm()
            return
        when = self._deadlines[0][0]
        if self._timer is not None and self._timer.when() <= self._loop_time(loop, when):
            return
        self._disarm()
        self._timer = loop.call_at(self._loop_time(loop, when), self._expire, loop)

    def _loop_time(self, loop: asyncio.AbstractEventLoop, when: float) -> float:
        return loop.time() + max(0.0, when - self.clock())

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._holds:
            self._deadlines.clear()

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = self.clock()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, conn = heapq.heappop(self._deadlines)
            entry = self._holds.pop(conn, None)
            if entry is not None:
                self._reject(entry, Reason.TIMEOUT)
        self._arm(loop)
