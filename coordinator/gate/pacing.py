"""Pacing admissions on a ready instance: slow start, and a fleet-wide admission rate.

A deploy sends every client of every instance to the survivors, then to each new
instance the moment it is ready. Two limits spread that wave (docs/guide.md: What a client sees):

- **Slow start** (``COORD_SLOWSTART``, seconds): a newly ready instance admits at a rate
  that starts at ``COORD_MAX_QUEUE / COORD_SLOWSTART`` connections per second (at least
  one) and doubles every tenth of the window; after the window there is no limit.
- **A fleet admission rate** (``COORD_FLEET_ADMIT_RATE`` per second, ``COORD_FLEET_ADMIT_
  BURST``): a token bucket in Redis (``N:admit``), refilled on the Redis server's clock by
  one Lua script, shared by every instance; with Redis unreachable each instance takes its
  share, the rate divided by the live instances it last heard of.

The excess is held, not rejected: it waits in the gate's hold queue (within the hold cap
and its deadline) and is released first in, first out as the limits allow, by one pump
task owned by the gate.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import redis.asyncio as redis

from coordinator._redis.client import REDIS_ERRORS, refused
from coordinator._tasks import TaskSet
from coordinator.gate.holds import HoldQueue
from coordinator.settings import Settings

log = logging.getLogger("coordinator.pacing")
DOUBLINGS = 10  # the slow-start rate doubles this many times over its window
MAX_WAIT = 0.5  # the pump re-checks at least this often while connections wait
FLEET_TIMEOUT = 1.0  # a bucket call slower than this: the local share decides
SCRIPT_NEEDS = "EVALSHA, TIME, HGET, HSET, PEXPIRE, ZCOUNT on N:admit and N:instances"

# KEYS[1] = N:admit (hash: tokens, at: the bucket's level and when it was computed)
# KEYS[2] = N:instances (sorted set: id -> last heartbeat, server clock), to count the live
# instances
# ARGV[1] = rate (tokens per second), ARGV[2] = burst (the bucket's size)
# ARGV[3] = tokens wanted, ARGV[4] = liveness window (seconds)
# Refills by the time elapsed on the server's clock (anything absurd in the hash, a level
# above the burst, a time more than a second ahead, not a number, starts from a full
# bucket; a time a moment ahead, as a stored time rounded up would be, counts as now),
# takes what it can, stores the rest to the microsecond. Returns {tokens granted, seconds
# until the next token (as text), live instances}.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
local at = tonumber(redis.call('HGET', KEYS[1], 'at'))
if not tokens or not at or tokens ~= tokens or at ~= at or tokens > burst or tokens < 0
   or at > now + 1 then
  tokens, at = burst, now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local granted = math.min(math.floor(tokens), wanted)
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
local wait = 0
if granted < wanted then wait = (1 - tokens) / rate end
local live = redis.call('ZCOUNT', KEYS[2], now - tonumber(ARGV[4]), '+inf')
return {granted, tostring(wait), live}
"""


class Bucket:
    """A local token bucket whose rate may change with time (``rate(now)``, None: no
    limit). Tokens accrue at the rate up to ``burst``."""

    def __init__(self, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self._at = clock()

    def take(self, wanted: int, rate: float | None) -> tuple[int, float]:
        """(granted, seconds until the next token)."""
        now = self.clock()
        if rate is None:
            self._at = now
            return wanted, 0.0
        self.tokens = min(self.burst, self.tokens + (now - self._at) * rate)
        self._at = now
        granted = min(int(self.tokens), wanted)
        self.tokens -= granted
        wait = 0.0 if granted == wanted else (1 - self.tokens % 1) / rate
        return granted, wait


class Pacer:
    """Admits on a ready instance as slow start and the fleet rate allow; the excess waits
    in the gate's hold queue and is released in order.

    ``active`` says whether admissions are paced now (the gate's fast path checks it).
    ``admit_now()`` takes a token for a newcomer when one is free and nobody waits.
    Fleet tokens are fetched ahead, a local allotment of this instance's share of the
    burst (``burst / live instances``), so that admissions within the rate go through at
    once, without a round trip; one pump task fetches more and releases the held ones.
    """

    def __init__(self, settings: Settings, queue: HoldQueue, client: redis.Redis,
                 keys: tuple[str, str], *, link_up: Callable[[], bool],
                 tasks: TaskSet, clock: Callable[[], float] = time.monotonic) -> None:
        self.queue = queue
        self.window = settings.slowstart
        self.start_rate = max(1.0, settings.max_queue / self.window) if self.window else 0.0
        self.fleet_rate = settings.fleet_admit_rate
        self.burst = settings.admit_burst
        self.liveness = settings.instance_ttl
        self.clock = clock
        self._link_up = link_up
        self._tasks = tasks
        self._keys = keys
        self._admit = client.register_script(ADMIT) if self.fleet_rate else None
        self._ramp = Bucket(max(1.0, self.start_rate), clock)
        self._share = Bucket(self.burst, clock)  # the fleet rate's local share, Redis down
        self._ramp_from: float | None = None
        self._pump: asyncio.Task[None] | None = None
        self.allotment = 0  # fleet tokens fetched ahead, not yet used
        self.live = 1  # instances, as of the last bucket call
        self.fleet_errors = 0
        self.denied = 0  # bucket calls refused for want of a permission
        self.paced = 0  # handshakes that waited for a token

    @property
    def enabled(self) -> bool:
        return self.fleet_rate is not None or self.window > 0

    @property
    def active(self) -> bool:
        """Whether an admission on a ready instance must go through the pacer now."""
        return self.fleet_rate is not None or self._ramp_rate() is not None

    @property
    def share(self) -> int:
        """How many fleet tokens this instance fetches ahead: its share of the burst."""
        return max(1, int(self.burst / self.live))

    def ready(self) -> None:
        """The instance became ready: the slow-start window opens now, and the fleet
        allotment is fetched."""
        if self.window:
            self._ramp_from = self.clock()
            self._ramp = Bucket(max(1.0, self.start_rate), self.clock)
            self._ramp.tokens = 1.0  # one at once, the rest (the held ones too) at the ramp
        self.kick(refill=True)

    def admit_now(self) -> bool:
        """A token for a newcomer, if one is free and nobody waits (first in, first out)."""
        if len(self.queue):
            return False
        if self.fleet_rate is not None and self.allotment < 1:
            self.kick(refill=True)
            return False
        granted, _wait = self._ramp.take(1, self._ramp_rate())
        if not granted:
            return False
        if self.fleet_rate is not None:
            self.allotment -= 1
            if self.allotment < self.share / 2:
                self.kick(refill=True)
        return True

    def kick(self, refill: bool = False) -> None:
        """Someone waits (or the allotment runs low): make sure the pump runs."""
        wanted = len(self.queue) or (refill and self.fleet_rate is not None)
        if wanted and (self._pump is None or self._pump.done()):
            self._pump = self._tasks.spawn(self._run(), "pacer")

    def retry_after(self) -> float:
        """When a handshake refused now (the hold queue full) could be let in."""
        rate = self._ramp_rate()
        if self.fleet_rate is not None:
            share = self.fleet_rate / max(1, self.live)
            rate = share if rate is None else min(rate, share)
        return 1.0 if not rate else max(1.0, len(self.queue) / rate)

    def _ramp_rate(self) -> float | None:
        if self._ramp_from is None:
            return None
        elapsed = self.clock() - self._ramp_from
        if elapsed >= self.window:
            self._ramp_from = None  # the window is over: no limit from here on
            return None
        rate: float = self.start_rate * 2.0 ** (DOUBLINGS * elapsed / self.window)
        return rate

    async def _run(self) -> None:
        """Fetch fleet tokens and release the held ones, while anyone waits; then top the
        allotment up once and stop."""
        refilled = False
        while True:
            wait = 0.0
            if self.fleet_rate is not None and (len(self.queue) or not refilled):
                wanted = max(len(self.queue), self.share) - self.allotment
                if wanted > 0:
                    granted, wait = await self._fetch(wanted)
                    self.allotment += granted
                refilled = True
            # Counted after the fetch, with no await before the return: a handshake that
            # joined the queue meanwhile found this pump running and relies on it.
            waiting = len(self.queue)
            if not waiting:
                return
            allowed = waiting if self.fleet_rate is None else min(waiting, self.allotment)
            granted, ramp_wait = self._ramp.take(allowed, self._ramp_rate())
            if granted:
                released = self.queue.release(granted)
                self.paced += released
                if self.fleet_rate is not None:
                    self.allotment -= released
            if granted < waiting:
                await asyncio.sleep(min(MAX_WAIT, max(wait, ramp_wait, 0.001)))

    async def _fetch(self, wanted: int) -> tuple[int, float]:
        """Up to ``wanted`` tokens from the fleet bucket, else from this instance's share;
        and how long until the next one."""
        rate = self.fleet_rate
        assert rate is not None and self._admit is not None
        if self._link_up():
            try:
                async with asyncio.timeout(FLEET_TIMEOUT):
                    granted, wait, live = await self._admit(
                        keys=list(self._keys), args=[rate, self.burst, wanted, self.liveness])
                self.live = max(1, int(live))
                return int(granted), _seconds(wait)
            except REDIS_ERRORS as exc:
                self._failed(exc, rate)
        self._share.burst = max(1.0, self.burst / self.live)
        return self._share.take(wanted, rate / self.live)

    def _failed(self, exc: BaseException, rate: float) -> None:
        self.fleet_errors += 1
        if refused(exc):
            self.denied += 1
            if self.denied == 1 or self.denied % 100 == 0:
                log.error("fleet admission rate refused by Redis (NOPERM: the instance's ACL "
                          "needs %s); admitting at this instance's share, %.3g/s",
                          SCRIPT_NEEDS, rate / self.live)
        elif self.fleet_errors == 1 or self.fleet_errors % 100 == 0:
            log.warning("fleet admission rate unavailable (%s): admitting at this "
                        "instance's share, %.3g/s", type(exc).__name__, rate / self.live)


def _seconds(raw: object) -> float:
    try:
        value = float(raw if isinstance(raw, (str, bytes, int, float)) else "nan")
    except ValueError:
        return MAX_WAIT
    return value if math.isfinite(value) and value >= 0 else MAX_WAIT
