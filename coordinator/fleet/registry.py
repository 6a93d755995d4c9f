"""The instance record in Redis: its writes (whole, with the heartbeat and the events of
a transition), its removal, and the fleet's phase statistics."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import redis.asyncio as redis
from redis.exceptions import ResponseError

from coordinator._redis import topology
from coordinator._redis.clock import ServerClock, server_seconds
from coordinator.contract.keys import Keys
from coordinator.contract.record import as_text, raw_record

log = logging.getLogger("coordinator")
PHASE_STATS_ALPHA = 0.3


MAX_PHASE_SECONDS = 3600.0  # a phase's average is clamped to this when read


# KEYS[1] = N:phase_stats
# ARGV    = alpha, then phase, duration pairs
# Folds each duration into the phase's exponential moving average; returns nothing.
FOLD_PHASE_STATS = """
local alpha = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local old = tonumber(redis.call('HGET', KEYS[1], ARGV[i]))
  local new = tonumber(ARGV[i + 1])
  if old then new = old * (1 - alpha) + new * alpha end
  redis.call('HSET', KEYS[1], ARGV[i], string.format('%.4f', new))
end
return 0
"""


async def write_record(client: redis.Redis, keys: Keys, record: Mapping[str, str],
                       ttl: float, heartbeat_at: float, *, event: bytes | None = None,
                       clock: ServerClock | None = None) -> None:
    """Replace the record whole, refresh its TTL and index entry in one atomic round
    trip, and publish ``event`` (an encoded message) on both channels in the same
    transaction.

    The record is deleted and written anew every time, so it heals itself: after a
    Redis restart or an expiry the next heartbeat restores it whole, and nothing another
    writer put there survives it (a field added, or the key made a string: whatever its
    type). An index of the wrong type, which no instance could write to, is removed and
    the write done once more (its members come back with their next heartbeats).

    ``heartbeat_at`` is a time of the Redis server's clock (the owner's estimate of it);
    with ``clock`` the transaction also reads ``TIME``, from which ``clock`` learns.
    """
    try:
        await _write(client, keys, record, ttl, heartbeat_at, event, clock)
    except ResponseError as exc:
        # Asked of the key, not read in the error's text: redis-py 6.x words a pipeline's
        # error "... caused error: {exception.args}", the server's words lost.
        if await client.type(keys.instances) in (b"zset", "zset", b"none", "none"):
            raise
        log.warning("%s was not a sorted set (%s): removed, so that the fleet's heartbeats "
                    "rebuild it", keys.instances, exc)
        await client.delete(keys.instances)
        # EXEC ran every other command, the event's publishes included: not again.
        await _write(client, keys, record, ttl, heartbeat_at, None, clock)


async def _write(client: redis.Redis, keys: Keys, record: Mapping[str, str], ttl: float,
                 heartbeat_at: float, event: bytes | None, clock: ServerClock | None) -> None:
    instance_id = record["id"]
    key = keys.instance(instance_id)
    publish = await _publish_command(client, event)
    async with client.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        pipe.hset(key, mapping=cast("Mapping[Any, Any]", record))  # invariant key type
        pipe.pexpire(key, int(ttl * 1000))
        pipe.zadd(keys.instances, {instance_id: heartbeat_at})
        _publish(pipe, publish, keys, instance_id, event)
        if clock is not None:
            pipe.time()
        sent = clock.monotonic() if clock is not None else 0.0
        replies = await pipe.execute()
    if clock is not None and (server := server_seconds(replies[-1])) is not None:
        clock.observe(server, sent, clock.monotonic())


def _wrong_type(exc: ResponseError) -> bool:
    return "WRONGTYPE" in str(exc)  # in a pipeline: "Command # 4 (...) caused error: ..."


async def remove_record(client: redis.Redis, keys: Keys, instance_id: str, *,
                        event: bytes | None = None) -> None:
    """Remove the record and its index entry, publishing ``event`` in the same transaction."""
    publish = await _publish_command(client, event)
    async with client.pipeline(transaction=True) as pipe:
        pipe.delete(keys.instance(instance_id))
        pipe.zrem(keys.instances, instance_id)
        _publish(pipe, publish, keys, instance_id, event)
        await pipe.execute()


async def _publish_command(client: redis.Redis, event: bytes | None) -> str:
    """SPUBLISH where the topology shards channels (subscribers there SSUBSCRIBE)."""
    if event is None:
        return "PUBLISH"
    return "SPUBLISH" if (await topology.resolve(client)).sharded else "PUBLISH"


def _publish(pipe: Any, command: str, keys: Keys, instance_id: str,
             event: bytes | None) -> None:
    if event is not None:
        pipe.execute_command(command, keys.events, event)
        pipe.execute_command(command, keys.instance_events(instance_id), event)


async def read_record(client: redis.Redis, keys: Keys, instance_id: str,
                      clock: ServerClock | None = None) -> dict[str, str]:
    """The record as text; empty when there is none, or when the key holds something
    else than a hash (no instance wrote that: it reads as no record, not as an outage).
    With ``clock``, ``TIME`` is read in the same round trip and ``clock`` learns from it."""
    if clock is None:
        try:
            return raw_record(await client.hgetall(keys.instance(instance_id)))
        except ResponseError as exc:
            if _wrong_type(exc):
                return {}
            raise
    async with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.instance(instance_id))
        pipe.time()
        sent = clock.monotonic()
        raw, now = await pipe.execute(raise_on_error=False)
    if (server := server_seconds(now)) is not None:
        clock.observe(server, sent, clock.monotonic())
    elif isinstance(now, BaseException):
        raise now
    if isinstance(raw, ResponseError) and _wrong_type(raw):
        return {}
    if isinstance(raw, BaseException):
        raise raw
    return raw_record(raw)


class PhaseStats:
    """Folds a startup's phase durations into ``N:phase_stats`` (the script registered
    once, for the life of the owner)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._fold = client.register_script(FOLD_PHASE_STATS)

    async def fold(self, durations: Mapping[str, float]) -> None:
        args: list[Any] = [PHASE_STATS_ALPHA]
        for phase, seconds in durations.items():
            args += [phase, f"{seconds:.4f}"]
        await self._fold(keys=[self.keys.phase_stats], args=args)


async def read_phase_stats(client: redis.Redis, keys: Keys,
                           phases: Sequence[str]) -> dict[str, float]:
    """The fleet's average duration of each of ``phases`` (one HMGET: however many fields
    a writer added to the hash, only these are read)."""
    if not phases:
        return {}
    return parse_phase_stats(phases, await client.hmget(keys.phase_stats, list(phases)))


def parse_phase_stats(phases: Sequence[str], values: Sequence[Any]) -> dict[str, float]:
    """``phases`` with their values as read: each a number of seconds clamped to
    [0, MAX_PHASE_SECONDS]; missing, unparsable, negative or non-finite ones left out."""
    stats: dict[str, float] = {}
    for phase, value in zip(phases, values, strict=False):
        try:
            seconds = float(as_text(value)) if value is not None else math.nan
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            stats[phase] = min(seconds, MAX_PHASE_SECONDS)
    return stats
