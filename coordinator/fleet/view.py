"""The fleet view: every live instance and the totals, read from Redis in bounded pages.

The one reader behind everything that shows the fleet (``/fleet``, ``coordinator fleet``,
the dashboard), so they always agree."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

import redis.asyncio as redis
from redis.exceptions import NoPermissionError, ResponseError

from coordinator._redis.client import REDIS_ERRORS, refused
from coordinator.contract.documents import FleetDocument, FleetTotals, InstanceView
from coordinator.contract.keys import MAX_ID_CHARS, Keys, printable_name
from coordinator.contract.phases import State
from coordinator.contract.record import RecordView, as_text, decode_fields, is_live
from coordinator.contract.signing import Keyring, record_signature_ok

PAGE_SIZE = 200
DocT = TypeVar("DocT")
DocT_co = TypeVar("DocT_co", covariant=True)


MAX_INSTANCES = 5000  # index members one snapshot reads at most (the most recent)


MAX_LEASES = 10000  # leases one snapshot reads at most (the latest expiry first)


PRUNE_BATCH = 500  # members per prune call


# KEYS[1] = N:instances, KEYS[2] = N:leases
# ARGV[1] = how many index members to read at most, ARGV[2] = how many leases at most
# Returns one JSON object: {"index": [id, score, ...] (the most recent heartbeats first),
# "size": members in the index, "leases": [member, expiry, ...] (the latest expiry
# first), "time": [seconds, microseconds]} (the server's clock). Read-only.
READ_INDEX = """
local t = redis.call('TIME')
return cjson.encode({index = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1,
                                        'WITHSCORES'),
                     size = redis.call('ZCARD', KEYS[1]),
                     leases = redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[2]) - 1,
                                         'WITHSCORES'),
                     time = t})
"""


# KEYS   = N:instance:<id> for each instance of one page of the fleet view
# ARGV[1] = the largest record read, in bytes of memory (MEMORY USAGE, SAMPLES 0)
# Returns one JSON array with, for each key, its HGETALL as a flat [field, value, ...]
# list; {} (an empty Lua table encodes as {}) for a missing key, a key of another type,
# or a record larger than ARGV[1], which is never read. Read-only.
READ_PAGE = """
local out, limit = {}, tonumber(ARGV[1])
for i = 1, #KEYS do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'hash' or (redis.call('MEMORY', 'USAGE', KEYS[i], 'SAMPLES', '0') or 0) > limit
  then
    out[i] = {}
  else
    out[i] = redis.call('HGETALL', KEYS[i])
  end
end
return cjson.encode(out)
"""
MAX_RECORD_BYTES = 16384  # a record as an instance writes it takes about 1 KiB


# KEYS[1] = N:instances
# ARGV    = member, score pairs: each member judged gone, with the score it had when read
# Removes each member whose score has not moved since (no heartbeat in between, so a
# reader never drops an instance that came back); returns how many were removed.
PRUNE_INDEX = """
local removed = 0
for i = 1, #ARGV, 2 do
  local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]))
  if score and score <= tonumber(ARGV[i + 1]) then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
"""


async def fleet_snapshot(client: redis.Redis, keys: Keys, *, fleet_cap: int | None = None,
                         now: float | None = None, page_size: int = PAGE_SIZE,
                         prune: bool = True, max_instances: int = MAX_INSTANCES,
                         keyring: Keyring | None = None) -> FleetDocument:
    """The fleet as one JSON-ready document: a :class:`FleetReader`'s snapshot, once."""
    reader = FleetReader(client, keys, page_size=page_size, prune=prune,
                         max_instances=max_instances, keyring=keyring)
    return await reader.snapshot(fleet_cap=fleet_cap, now=now)


class FleetReader:
    """Reads the fleet view; keep one to remember what Redis refused this client.

    This is the one reader behind everything that shows the fleet (``/fleet``,
    ``coordinator fleet``, the dashboard), so they always agree. The document is built
    from Redis alone: the fleet cap is the one the live instances report, and
    ``fleet_cap`` is only a fallback for when none of them reports one.

    Round trips: one for the index, the server's clock and the leases; one read per
    page of ``page_size`` instances; and, only when something is stale, one per
    :data:`PRUNE_BATCH` to prune the index. Liveness and leases are judged on the Redis
    server's clock (read with the index), the clock of each instance's ``heartbeat_at``
    (against its own ``ttl``) and of each lease's expiry, so no skew between the
    reader's host and the instances' makes a live instance look gone; ``now`` (the
    reader's clock) dates the document and the times in phase, which are the owners'.

    Bounded whatever the index holds: at most ``max_instances`` members are read, those
    with the most recent heartbeats, and at most :data:`MAX_LEASES` leases; the document
    says ``"truncated": true`` when there were more. A member that cannot be an instance
    id (over 128 characters, control characters) is judged gone without a read.

    Bounded in bytes too: a record larger than :data:`MAX_RECORD_BYTES` (by ``MEMORY
    USAGE``, which reads no value) is never read, and counts as gone; a real instance's
    next heartbeat replaces it whole. With ``keyring`` (the instances' signing keys) a
    record whose signature does not verify, or that is another instance's, is left out
    too: a writer without the key cannot add an instance to the view. ``dropped`` counts
    the records left out for their size or signature.

    Permissions: a user whose ACL refuses scripts (an operator's read-only user) reads
    with plain commands instead and never prunes (pruning is a script); one that may run
    scripts but not write stops pruning after the first refusal; one that may not ask a
    record's size (``MEMORY USAGE``) reads records whole. None of these is an error.
    """

    def __init__(self, client: redis.Redis, keys: Keys, *, page_size: int = PAGE_SIZE,
                 prune: bool = True, max_instances: int = MAX_INSTANCES,
                 keyring: Keyring | None = None) -> None:
        self.client = client
        self.keys = keys
        self.keyring = keyring
        self.sizes = True  # False once Redis refused or did not know MEMORY USAGE
        self.dropped: Counter[str] = Counter()  # records left out: "oversized", "signature"
        self.page_size = page_size
        self.prune = prune
        self.max_instances = max_instances
        self.scripts = True  # False once Redis refused this user a script (NOPERM)
        # Registered once (each registration hashes the script's text again).
        self._index_script = client.register_script(READ_INDEX)
        self._page_script = client.register_script(READ_PAGE)
        self._prune_script = client.register_script(PRUNE_INDEX)

    async def snapshot(self, *, fleet_cap: int | None = None, now: float | None = None
                       ) -> FleetDocument:
        now = time.time() if now is None else now
        index, size, lease_rows, server_now = await self._read_index()
        leases_by_instance: Counter[str] = Counter()
        for member, expiry in lease_rows:
            if expiry > server_now:
                leases_by_instance[as_text(member).partition(":")[0]] += 1
        scores = {as_text(member): score for member, score in index}
        ids = [i for i in scores if printable_name(i, MAX_ID_CHARS)]
        gone = [i for i in scores if not printable_name(i, MAX_ID_CHARS)]
        instances: list[InstanceView] = []
        for start in range(0, len(ids), self.page_size):
            chunk = ids[start:start + self.page_size]
            records = await self._read_page(chunk)
            for instance_id, record in zip(chunk, records, strict=True):
                if record and is_live(record, server_now):
                    instances.append(_view(instance_id, record, now, server_now,
                                           leases_by_instance))
                else:
                    gone.append(instance_id)
        if gone and self.prune and self.scripts:
            await self._prune([(i, scores[i]) for i in gone])
        instances.sort(key=lambda r: str(r["id"]))
        live_leases = sum(leases_by_instance.values())
        return {
            "namespace": self.keys.namespace,
            "generated_at": round(now, 3),
            "instances": instances,
            "totals": fleet_totals(instances, live_leases, fleet_cap),
            "index_size": size,
            "truncated": size > len(index) or live_leases >= MAX_LEASES,
        }

    async def _read_index(self) -> tuple[list[tuple[Any, float]], int,
                                         list[tuple[Any, float]], float]:
        """The most recent index members and the latest leases with their scores, the
        index's size and the server's clock: one round trip (as one JSON text, for the
        reason _read_page gives)."""
        keys, client = self.keys, self.client
        if self.scripts:
            try:
                doc = json.loads(await self._index_script(
                    keys=[keys.instances, keys.leases], args=[self.max_instances, MAX_LEASES]))
                secs, usecs = doc["time"]
                return (_pairs(doc["index"]), int(doc["size"]), _pairs(doc["leases"]),
                        int(secs) + int(usecs) / 1e6)
            except NoPermissionError:
                self.scripts = False
            except (ResponseError, ValueError, TypeError, KeyError):
                pass
        async with client.pipeline(transaction=False) as pipe:
            pipe.zrevrange(keys.instances, 0, self.max_instances - 1, withscores=True)
            pipe.zcard(keys.instances)
            pipe.time()
            pipe.zrevrange(keys.leases, 0, MAX_LEASES - 1, withscores=True)
            index, size, (secs, usecs), leases = await pipe.execute()
        return list(index), int(size), list(leases), secs + usecs / 1e6

    async def _read_page(self, ids: list[str]) -> list[RecordView]:
        """Every instance hash of one page, decoded (``{}`` for a missing one), in one
        round trip.

        A script returns the page as one JSON text: redis-py's pure-Python reply parser
        spends most of a large snapshot on ~25 bulk replies per instance, and one string
        is far cheaper to parse (1,000 instances: 390 -> 74 ms, bench/fleet_scale.py).
        Where the server cannot run it (scripting disabled or refused, a stand-in without
        Lua) or a value is not UTF-8, the same page is read with a pipeline of HGETALL.
        """
        keys, client = self.keys, self.client
        if self.scripts:
            try:
                raw = await self._page_script(keys=[keys.instance(i) for i in ids],
                                              args=[MAX_RECORD_BYTES])
                rows = page_rows(raw, len(ids))
                return [self._decoded(i, r) for i, r in zip(ids, rows, strict=True)]
            except NoPermissionError:
                self.scripts = False
            except (ResponseError, ValueError, TypeError):
                pass
        small = await self._small(ids)
        async with client.pipeline(transaction=False) as pipe:
            for instance_id in small:
                pipe.hgetall(keys.instance(instance_id))
            # A key of the wrong type reads as a missing record (pruned), not as an outage.
            read = dict(zip(small, await pipe.execute(raise_on_error=False), strict=True))
        return [self._decoded(i, [as_text(x) for kv in raw.items() for x in kv])
                if isinstance(raw := read.get(i), dict) else RecordView() for i in ids]

    async def _small(self, ids: list[str]) -> list[str]:
        """The ids whose record is at most MAX_RECORD_BYTES (all of them where Redis
        will not say a key's size)."""
        if not self.sizes:
            return ids
        async with self.client.pipeline(transaction=False) as pipe:
            for instance_id in ids:
                pipe.execute_command("MEMORY", "USAGE", self.keys.instance(instance_id),
                                     "SAMPLES", "0")
            sizes = await pipe.execute(raise_on_error=False)
        if any(isinstance(size, ResponseError) for size in sizes):
            self.sizes = False  # refused (NOPERM) or unknown: read records whole
            return ids
        small = [i for i, size in zip(ids, sizes, strict=True)
                 if not isinstance(size, int) or size <= MAX_RECORD_BYTES]
        self.dropped["oversized"] += len(ids) - len(small)
        return small

    def _decoded(self, instance_id: str, flat: list[str]) -> RecordView:
        """A record given as flat text, decoded; empty when it is oversized (the script
        read nothing) or, with a keyring, not verifiably this instance's."""
        if not flat:
            return RecordView()
        if self.keyring is not None:
            raw = dict(zip(flat[::2], flat[1::2], strict=True))
            if raw.get("id") != instance_id or not record_signature_ok(raw, self.keyring):
                self.dropped["signature"] += 1
                return RecordView()
        return decode_fields(flat)

    async def _prune(self, gone: list[tuple[str, float]]) -> None:
        """Remove ``gone`` members from the index in batches, each only if it has not
        heartbeated since it was read; stop for good if this user may not write."""
        script = self._prune_script
        for start in range(0, len(gone), PRUNE_BATCH):
            args: list[Any] = []
            for instance_id, score in gone[start:start + PRUNE_BATCH]:
                args += [instance_id, repr(score)]
            try:
                await script(keys=[self.keys.instances], args=args)
            except ResponseError as exc:
                if not refused(exc):
                    raise
                self.prune = False
                return


class Snapshots(Protocol[DocT_co]):
    """What :class:`SharedSnapshot` reads through (a :class:`FleetReader`)."""

    def snapshot(self) -> Awaitable[DocT_co]: ...


class SharedSnapshot(Generic[DocT]):
    """One fleet snapshot for every concurrent reader: at most one Redis read per
    ``max_age`` seconds however many ask (single flight, then a cache), so that readers
    of ``/fleet`` cannot put the fleet's whole read on the gate's event loop once each.
    A failed read is shared and kept for ``max_age`` too. While ``usable()`` is false
    (the instance's Redis link is down) nothing cached is served: each reader waits for
    a read of its own (still one at a time), so an outage shows at once."""

    def __init__(self, reader: Snapshots[DocT], max_age: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 usable: Callable[[], bool] = lambda: True) -> None:
        self.reader = reader
        self.max_age = max_age
        self.clock = clock
        self.usable = usable
        self.reads = 0
        self._flight: asyncio.Future[DocT] | None = None
        self._started = -math.inf

    async def get(self) -> DocT:
        now = self.clock()
        flight = self._flight
        if flight is None or (flight.done() and (now - self._started >= self.max_age
                                                 or not self.usable())):
            self._started, self.reads = now, self.reads + 1
            flight = self._flight = asyncio.ensure_future(self.reader.snapshot())
            flight.add_done_callback(_retrieved)
        # A reader that leaves (a client gone) must not cancel the others' read.
        return await asyncio.shield(flight)

    async def aclose(self) -> None:
        """Cancel a read in flight (its owner is shutting down) and wait for it to end."""
        flight, self._flight = self._flight, None
        if flight is not None and not flight.done():
            flight.cancel()
            with contextlib.suppress(asyncio.CancelledError, *REDIS_ERRORS):
                await flight


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # seen: no "exception was never retrieved" when all left


def page_rows(raw: bytes | str, expected: int) -> list[list[str]]:
    """READ_PAGE's JSON text: one flat [field, value, ...] list per key (empty for a
    missing, oversized or malformed one). ValueError when the text is not such a page at
    all (the caller reads the page another way)."""
    rows = json.loads(raw)
    if not isinstance(rows, list) or len(rows) != expected:
        raise ValueError("a page of the fleet view has the wrong length")
    return [r if _flat_text(r) else [] for r in rows]


def decode_page(raw: bytes | str, expected: int) -> list[RecordView]:
    """READ_PAGE's JSON text: one decoded record per key (``{}`` for a missing or
    malformed one)."""
    return [decode_fields(r) if r else RecordView() for r in page_rows(raw, expected)]


def _flat_text(row: Any) -> bool:
    return isinstance(row, list) and len(row) % 2 == 0 and all(isinstance(x, str) for x in row)


def _pairs(flat: Any) -> list[tuple[Any, float]]:
    """[member, score, ...] (an empty Lua table encodes as {}) -> [(member, score)]."""
    if not isinstance(flat, list):
        return []
    return [(flat[i], float(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]


def _view(instance_id: str, decoded: RecordView, now: float, server_now: float,
          leases: Mapping[str, int]) -> InstanceView:
    """One live instance as the fleet view shows it: its hash fields plus derived ages
    (the heartbeat's on the server's clock, the phase's on the reader's)."""
    record = InstanceView(**decoded)  # type: ignore[typeddict-item]  # the same keys, more
    record.pop("sig", None)
    record["id"] = instance_id
    beat = record.get("heartbeat_at")
    record["heartbeat_age"] = round(max(0.0, server_now - (beat or server_now)), 3)
    phase_started = record.get("phase_started_at")
    record["time_in_phase"] = (round(max(0.0, now - phase_started), 3)
                               if isinstance(phase_started, float) else None)
    expected = record.get("expected_ready_at")
    record["expected_ready_in"] = (round(max(0.0, expected - now), 3)
                                   if record.get("state") == State.STARTING.value
                                   and isinstance(expected, float) else None)
    record["held_leases"] = leases.get(instance_id, 0)
    return record


def fleet_totals(instances: list[InstanceView], leases: int,
                 fleet_cap: int | None = None) -> FleetTotals:
    """Instances by state, ready ratio, held connections against the caps, leases.

    ``fleet_cap`` is the smallest cap any live instance enforces (they should all agree),
    else the one given; ``leases`` counts every unexpired lease, including those of
    instances already gone. ``by_state`` lists every state, zeros included.
    """
    by_state = Counter(str(r.get("state")) for r in instances)
    caps = [cap for r in instances if isinstance(cap := r.get("fleet_cap"), int)]
    ready = by_state[State.READY.value]
    known = [s.value for s in State]
    return {
        "instances": len(instances),
        "by_state": {**{s: by_state[s] for s in known},
                     **{s: n for s, n in sorted(by_state.items()) if s not in known}},
        "ready": ready,
        "ready_ratio": round(ready / len(instances), 3) if instances else 0.0,
        "held": sum(int(r.get("queue_depth") or 0) for r in instances),
        "connections": sum(int(r.get("connections") or 0) for r in instances),
        "queue_max": sum(int(r.get("queue_max") or 0) for r in instances),
        "leases": leases,
        "fleet_cap": min(caps) if caps else fleet_cap,
        "admitted": sum(int(r.get("admitted") or 0) for r in instances),
        "rejected": sum(int(r.get("rejected") or 0) for r in instances),
    }
