"""The Redis server's clock, as one process estimates it.

Every time one process compares with another's (an instance's last heartbeat, against
a reader's now, or against ``TIME`` inside a script) is on the Redis server's clock, so
that no skew between hosts, and no step of a host's clock, can make a live instance look
dead or a dead one live. A process learns the server's clock from ``TIME`` replies it
gets anyway (the owner's record writes, the follower's record reads): each reply, taken
at the middle of its round trip, gives the offset between the server's clock and this
process's monotonic clock, to within half that round trip. Tied to the monotonic clock,
the estimate ignores steps of the host's wall clock; a step of the server's clock (or a
failover to a server whose clock differs) is taken at the next reply that disagrees.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import redis.asyncio as redis

DRIFT = 1e-4  # how fast an estimate may drift from the server's clock (100 ppm: generous)


class ServerClock:
    """The Redis server's time now, estimated from ``TIME`` replies (:meth:`observe`).

    Before the first reply it is the local wall clock. Of the replies, the one with the
    smallest uncertainty (half its round trip, plus :data:`DRIFT` for its age) is kept,
    unless a newer one disagrees with it by more than both uncertainties: the server's
    clock moved, and the newer is taken.
    """

    def __init__(self, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.monotonic = monotonic
        self.offset = wall() - monotonic()  # server time = monotonic time + offset
        self.error = math.inf  # the offset's uncertainty as of self._at, seconds
        self._at = monotonic()

    @property
    def synced(self) -> bool:
        return self.error != math.inf

    def now(self) -> float:
        """The server's time now (unix seconds)."""
        return self.monotonic() + self.offset

    def at(self, monotonic: float) -> float:
        """The server's time at an instant of this process's monotonic clock."""
        return monotonic + self.offset

    def uncertainty(self) -> float:
        """How far :meth:`now` may be off (inf before the first reply)."""
        return self.error + DRIFT * max(0.0, self.monotonic() - self._at)

    def observe(self, server: float, sent: float, received: float) -> None:
        """A ``TIME`` reply, ``server`` seconds, to a request sent at ``sent`` and answered
        at ``received`` (both of :attr:`monotonic`)."""
        half = max(0.0, received - sent) / 2
        offset = server - (sent + half)
        kept = self.uncertainty()
        if half <= kept or abs(offset - self.offset) > half + kept:
            self.offset, self.error, self._at = offset, half, received

    async def sync(self, client: redis.Redis) -> float:
        """Ask the server its time (one round trip) and learn from it; the time."""
        sent = self.monotonic()
        secs, usecs = await client.time()
        server = int(secs) + int(usecs) / 1e6
        self.observe(server, sent, self.monotonic())
        return server


def server_seconds(reply: object) -> float | None:
    """A ``TIME`` reply as seconds, or None when it is not one."""
    if not isinstance(reply, (list, tuple)) or len(reply) != 2:
        return None
    try:
        return int(reply[0]) + int(reply[1]) / 1e6
    except (TypeError, ValueError):
        return None
