"""The fleet-wide cap on held connections: one lease per held handshake in ``N:leases``.

A lease is a member ``<id>:<conn>`` of a sorted set whose score is its expiry, taken
from the Redis server's clock (``TIME`` inside the script) so that clock skew between
instances can neither stretch nor cut it. The acquire script purges expired leases
before it counts, so the leases of a SIGKILLed instance free their slots on their own.

Redis is never allowed to block the gate: with the link down, or an acquire that fails
or takes longer than ``ACQUIRE_TIMEOUT``, the caller falls back to its local cap
(:data:`LOCAL`) and :attr:`FleetLeases.mode` says so. Releases are batched by one
owned task, so releasing a whole queue at once costs one round trip, not one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import secrets
from collections.abc import Callable, Iterable

import redis.asyncio as redis

from coordinator._redis.client import REDIS_ERRORS, refused
from coordinator._tasks import TaskSet
from coordinator.contract.record import CapMode
from coordinator.exceptions import UsageError

log = logging.getLogger("coordinator.leases")


class LeaseOutcome(enum.StrEnum):
    LEASED = "leased"  # the fleet granted a lease
    REFUSED = "refused"  # the fleet cap is reached
    LOCAL = "local"  # Redis unavailable: the local cap alone decides


LEASED, REFUSED, LOCAL = LeaseOutcome.LEASED, LeaseOutcome.REFUSED, LeaseOutcome.LOCAL
ACQUIRE_TIMEOUT = 1.0  # seconds; an acquire slower than this falls back to the local cap
LEASE_MARGIN = 2.0  # seconds a lease outlives its hold's deadline
MAX_HOLD = 30.0  # COORD_MAX_QUEUE_TIME's default
LONGEST_HOLD = 3600.0  # COORD_MAX_QUEUE_TIME's ceiling: no instance's lease outlives it
SKEW = 5.0  # slack for an instance's estimate of the Redis clock, on which it heartbeats
RELEASE_BATCH = 500  # members per release call (Lua's unpack() has a stack limit)
SCRIPT_NEEDS = ("the lease scripts need EVALSHA, TIME, ZREMRANGEBYSCORE, ZCARD, ZSCORE, ZRANGE, "
                "ZADD, ZREM")

# KEYS[1] = N:leases (sorted set, member -> expiry in unix seconds, server clock)
# KEYS[2] = N:instances (sorted set, instance id -> last heartbeat)
# ARGV[1] = member "<id>:<process>.<conn>"
# ARGV[2] = the fleet cap (integer)
# ARGV[3] = lease lifetime in milliseconds (hold deadline + margin)
# ARGV[4] = the longest lifetime any instance's lease can have, in milliseconds
#           (LONGEST_HOLD + margin, the same for the whole fleet): a lease expiring later
#           than that (1e12, inf) no instance wrote
# ARGV[5] = liveness window in seconds (0: off): at the cap, a lease counts only while
#           its instance heartbeated within it (the caller's own always count); the
#           others are removed
# Purges expired leases and impossible ones (a second of slack above the longest
# lifetime: a lease written a moment ago by another call must survive); at the cap,
# purges the leases of instances not live in the index; then adds (or renews) the
# member if the cap allows. Returns {1 if granted else 0, leases in the set afterwards}.
# Bounds are formatted to the microsecond: Lua's own number-to-text keeps 14 digits, a
# tenth of a millisecond at today's times, coarser than the scores.
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now))
local latest = now + tonumber(ARGV[4]) / 1000 + 1
redis.call('ZREMRANGEBYSCORE', KEYS[1], string.format('(%.6f', latest), '+inf')
local count = redis.call('ZCARD', KEYS[1])
local renewing = redis.call('ZSCORE', KEYS[1], ARGV[1])
local cap, window = tonumber(ARGV[2]), tonumber(ARGV[5])
if not renewing and count >= cap and window > 0 then
  local live_since, alive = now - window, {}
  alive[string.match(ARGV[1], '^([^:]+):') or ''] = true  -- the caller is live
  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local id = string.match(m, '^([^:]+):') or ''
    if alive[id] == nil then
      local beat = tonumber(redis.call('ZSCORE', KEYS[2], id))
      alive[id] = beat ~= nil and beat >= live_since
    end
    if not alive[id] then
      redis.call('ZREM', KEYS[1], m)
      count = count - 1
    end
  end
end
if not renewing and count >= cap then
  return {0, count}
end
redis.call('ZADD', KEYS[1], string.format('%.6f', now + tonumber(ARGV[3]) / 1000), ARGV[1])
if not renewing then count = count + 1 end
return {1, count}
"""

# KEYS[1] = N:leases
# ARGV    = the members to remove
# Returns the number of leases removed.
RELEASE = """
return redis.call('ZREM', KEYS[1], unpack(ARGV))
"""


class FleetLeases:
    """This instance's side of ``N:leases``: what it holds and how it asks for more.

    ``held`` changes only after the remote call succeeded: a lease enters it when the
    script granted it, and leaves it when the gate is done with the hold. An acquire
    that failed, timed out or was cancelled may still have landed in Redis, so its
    member is queued for release too (removing an absent member is harmless).
    """

    def __init__(self, client: redis.Redis, key: str, instance_id: str, cap: int | None, *,
                 link_up: Callable[[], bool] = lambda: True,
                 timeout: float = ACQUIRE_TIMEOUT, margin: float = LEASE_MARGIN,
                 max_hold: float = MAX_HOLD, index: str | None = None,
                 liveness: float = 0.0) -> None:
        self.key = key
        # N:instances, by default beside N:leases (both {N}:...); ``liveness`` (seconds,
        # 0: off) is how recent an instance's heartbeat must be for its leases to count
        # at the cap: the gate passes COORD_INSTANCE_TTL plus SKEW.
        self.index = index if index is not None else key.rpartition(":")[0] + ":instances"
        self.liveness = liveness
        self.instance_id = instance_id
        self._process = f"{os.getpid():x}{secrets.token_hex(2)}"
        self.cap = cap
        self.timeout = timeout
        self.margin = margin
        self.max_hold = max_hold  # COORD_MAX_QUEUE_TIME: no hold, so no lease, lasts longer
        self._link_up = link_up
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)
        self.held: set[str] = set()
        self._to_release: set[str] = set()
        self._tasks = TaskSet("coordinator-leases", log)
        self._flusher: asyncio.Task[None] | None = None
        self._fell_back = False
        self._closed = False
        self.outcomes = dict.fromkeys(LeaseOutcome, 0)
        self.errors = 0
        self.denied = 0  # acquires Redis refused for want of a permission (NOPERM)
        self.denial: str | None = None  # the latest refusal, until an acquire succeeds

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (it may be, while an acquire awaits Redis)."""
        return self._closed

    @property
    def enabled(self) -> bool:
        return self.cap is not None

    @property
    def mode(self) -> CapMode:
        """``fleet`` while leases are enforced, ``local`` while falling back, or ``off``.

        ``local`` while the link is down, or after an acquire failed on a link that looked
        up, until the next acquire succeeds.
        """
        return self.mode_with(self._link_up())

    def mode_with(self, link_up: bool) -> CapMode:
        """``mode`` as it is with the link up or down."""
        if self.cap is None:
            return CapMode.OFF
        return CapMode.LOCAL if self._fell_back or not link_up else CapMode.FLEET

    def member(self, conn: int) -> str:
        # Processes gating for one instance id (an owner and its followers, uvicorn
        # workers) number their holds independently: the process token keeps their
        # members apart, so one's renewal or release never touches another's lease.
        return f"{self.instance_id}:{self._process}.{conn}"

    async def acquire(self, conn: int, hold_for: float) -> LeaseOutcome:
        """Ask the fleet for a lease lasting ``hold_for`` plus the margin.

        Returns LEASED, REFUSED (the fleet cap is reached) or LOCAL (Redis unavailable:
        hold under the local cap alone). Never waits longer than ``timeout``.
        """
        if self._closed or not self._link_up():
            self._fell_back = False  # the link's own state says "local" from now on
            self.outcomes[LOCAL] += 1
            return LOCAL
        cap = self.cap
        if cap is None:
            raise UsageError("acquire() needs a fleet cap")
        member = self.member(conn)
        own_ms = int((self.max_hold + self.margin) * 1000)
        ttl_ms = max(1, min(own_ms, int((hold_for + self.margin) * 1000)))
        longest_ms = int((LONGEST_HOLD + self.margin) * 1000)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            async with asyncio.timeout(self.timeout):
                granted, _count = await self._acquire(
                    keys=[self.key, self.index],
                    args=[member, cap, ttl_ms, longest_ms, self.liveness])
        except REDIS_ERRORS as exc:
            self._discard_remote(member)
            self.errors += 1
            if refused(exc):
                return self._refused(exc)
            if not self._fell_back:
                log.warning("fleet lease unavailable (%s); holding under the local cap",
                            type(exc).__name__)
            return self._fall_back()
        except asyncio.CancelledError:
            self._discard_remote(member)
            raise
        if self._fell_back:
            log.info("fleet leases available again; the fleet cap applies")
        self._fell_back = False
        self.denial = None
        if not granted:
            self.outcomes[REFUSED] += 1
            return REFUSED
        if self.closed:  # stopped while the script ran: give it straight back
            self._discard_remote(member)
            return self._fall_back()
        self.held.add(member)
        self.outcomes[LEASED] += 1
        return LEASED

    def release(self, conn: int) -> None:
        """The hold is over (admitted, rejected, given up or cancelled): free the lease.

        Synchronous and cheap: the removal is sent by the release task, batched.
        """
        member = self.member(conn)
        if member in self.held:
            self.held.discard(member)
            self._discard_remote(member)

    async def close(self, timeout: float = 1.0) -> None:
        """A clean stop: remove every lease this instance holds, then refuse new ones."""
        self._closed = True
        self._flusher = None
        await self._tasks.cancel()
        members = self.held | self._to_release
        self.held.clear()
        self._to_release.clear()
        if members and self._link_up():
            with contextlib.suppress(*REDIS_ERRORS):
                async with asyncio.timeout(timeout):
                    await self._remove(members)

    # -- internals ------------------------------------------------------------------

    def _fall_back(self) -> LeaseOutcome:
        self._fell_back = True
        self.outcomes[LOCAL] += 1
        return LOCAL

    def _refused(self, exc: BaseException) -> LeaseOutcome:
        self.denied += 1
        first = self.denial is None  # logged once per link-up (see on_link_up), not per hold
        self.denial = f"{str(exc)[:160]} ({SCRIPT_NEEDS} on {self.key})"
        if first:
            log.error("fleet lease refused by Redis (NOPERM): %s; this instance's ACL lacks a "
                      "permission (docs/security.md); holding under the local cap alone",
                      self.denial)
        return self._fall_back()

    def on_link_up(self) -> None:
        """The link came (back) up: send queued releases; a refusal is logged again."""
        if self.denial is not None:
            log.error("fleet leases were refused by Redis (NOPERM): %s; still holding under "
                      "the local cap until an acquire succeeds", self.denial)
        self.flush()

    def flush(self) -> None:
        """Send the queued releases now; the coordinator calls it when the link is back."""
        if self._to_release and not self._closed and (
                self._flusher is None or self._flusher.done()):
            self._flusher = self._tasks.spawn(self._flush(), "release")

    def _discard_remote(self, member: str) -> None:
        self._to_release.add(member)  # close() removes what is left once closed
        self.flush()

    async def _flush(self) -> None:
        """Send queued releases until none are left.

        With the link down, or on a Redis error, they stay queued until the next flush (a
        release, or the link coming back), so that a blip does not leave the fleet cap
        full until the leases expire. The queue stays small: no lease is acquired while
        the link is down, so it holds at most the leases of the holds of that moment.
        """
        while self._to_release and self._link_up():
            batch = set(self._to_release)
            try:
                async with asyncio.timeout(self.timeout):
                    await self._remove(batch)
            except REDIS_ERRORS:
                self.errors += 1
                return
            # Not on cancellation: close() then removes what is still queued.
            self._to_release -= batch

    async def _remove(self, members: Iterable[str]) -> None:
        ordered = sorted(members)
        for start in range(0, len(ordered), RELEASE_BATCH):
            await self._release(keys=[self.key], args=ordered[start:start + RELEASE_BATCH])
