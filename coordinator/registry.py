"""The instance record in Redis, its heartbeat, the phase statistics and the fleet view.

Writers and readers of ``N:instance:<id>``, ``N:instances`` and ``N:phase_stats`` all
live here, so the public contract of DESIGN.md has one implementation.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import redis.asyncio as redis

from .keys import Keys

INT_FIELDS = frozenset({"phase_index", "phases_total", "queue_depth", "queue_max", "admitted",
                        "rejected", "held_leases", "pid"})
FLOAT_FIELDS = frozenset({"started_at", "updated_at", "heartbeat_at", "ttl", "phase_started_at",
                          "ready_at", "expected_ready_at"})
PHASE_STATS_ALPHA = 0.3
PAGE_SIZE = 500

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


def encode_record(record: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in record.items():
        if value is None:
            out[name] = ""
        elif isinstance(value, float):
            out[name] = f"{value:.6f}".rstrip("0").rstrip(".")
        else:
            out[name] = str(value)
    return out


def decode_record(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """A hash as read from Redis, with numbers parsed and empty strings as None."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        out[name] = _parse(name, text)
    return out


def _parse(name: str, text: str) -> Any:
    if text == "":
        return None
    try:
        if name in INT_FIELDS:
            return int(text)
        if name in FLOAT_FIELDS:
            value = float(text)
            return value if math.isfinite(value) else None
    except ValueError:
        return None
    return text


def raw_record(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A hash as read from Redis, as text (what a signature covers)."""
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode(errors="replace")
            if isinstance(v, bytes) else v) for k, v in raw.items()}


async def write_record(client: redis.Redis, keys: Keys, record: Mapping[str, str],
                       ttl: float, heartbeat_at: float) -> None:
    """Write the whole record, refresh its TTL and index entry in one atomic round trip.

    Writing every field every time makes the record self-healing: after a Redis restart
    or an expiry, the next heartbeat restores it whole.
    """
    key = keys.instance(record["id"])
    async with client.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=dict(record))
        pipe.pexpire(key, int(ttl * 1000))
        pipe.zadd(keys.instances, {record["id"]: heartbeat_at})
        await pipe.execute()


async def remove_record(client: redis.Redis, keys: Keys, instance_id: str) -> None:
    async with client.pipeline(transaction=True) as pipe:
        pipe.delete(keys.instance(instance_id))
        pipe.zrem(keys.instances, instance_id)
        await pipe.execute()


async def read_record(client: redis.Redis, keys: Keys, instance_id: str) -> dict[str, str]:
    return raw_record(await client.hgetall(keys.instance(instance_id)))


async def fold_phase_stats(client: redis.Redis, keys: Keys,
                           durations: Mapping[str, float]) -> None:
    args: list[Any] = [PHASE_STATS_ALPHA]
    for phase, seconds in durations.items():
        args += [phase, f"{seconds:.4f}"]
    script = client.register_script(FOLD_PHASE_STATS)
    await script(keys=[keys.phase_stats], args=args)


async def read_phase_stats(client: redis.Redis, keys: Keys) -> dict[str, float]:
    stats: dict[str, float] = {}
    for name, value in (await client.hgetall(keys.phase_stats)).items():
        try:
            seconds = float(value)
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            stats[name.decode() if isinstance(name, bytes) else name] = seconds
    return stats


def is_live(record: Mapping[str, Any], now: float) -> bool:
    heartbeat, ttl = record.get("heartbeat_at"), record.get("ttl")
    if not isinstance(heartbeat, float) or not isinstance(ttl, float):
        return False
    return now - heartbeat <= ttl


async def fleet_snapshot(client: redis.Redis, keys: Keys, *, fleet_cap: int | None = None,
                         now: float | None = None, page_size: int = PAGE_SIZE,
                         prune: bool = True) -> dict[str, Any]:
    """The fleet as one JSON-ready document: every live instance and the totals.

    Round trips: one to list the index, one pipelined read per page of instances, one to
    count leases, and (only when there is something to prune) one to prune.
    """
    now = time.time() if now is None else now
    ids = [m.decode() if isinstance(m, bytes) else m
           for m in await client.zrange(keys.instances, 0, -1)]
    instances: list[dict[str, Any]] = []
    gone: list[str] = []
    for start in range(0, len(ids), page_size):
        chunk = ids[start:start + page_size]
        async with client.pipeline(transaction=False) as pipe:
            for instance_id in chunk:
                pipe.hgetall(keys.instance(instance_id))
            rows = await pipe.execute()
        for instance_id, raw in zip(chunk, rows, strict=True):
            record = decode_record(raw) if raw else {}
            if record and is_live(record, now):
                record.pop("sig", None)
                record["heartbeat_age"] = round(now - record["heartbeat_at"], 3)
                if isinstance(record.get("phase_started_at"), float):
                    record["time_in_phase"] = round(now - record["phase_started_at"], 3)
                instances.append(record)
            else:
                gone.append(instance_id)
    async with client.pipeline(transaction=False) as pipe:
        pipe.zcount(keys.leases, now, "+inf")
        if prune and gone:
            pipe.zrem(keys.instances, *gone)
        leases = (await pipe.execute())[0]
    instances.sort(key=lambda r: str(r.get("id", "")))
    by_state = Counter(str(r.get("state")) for r in instances)
    held = sum(int(r.get("queue_depth") or 0) for r in instances)
    ready = by_state.get("ready", 0)
    return {
        "namespace": keys.namespace,
        "generated_at": round(now, 3),
        "instances": instances,
        "totals": {
            "instances": len(instances),
            "by_state": dict(sorted(by_state.items())),
            "ready_ratio": round(ready / len(instances), 3) if instances else 0.0,
            "held": held,
            "leases": int(leases),
            "fleet_cap": fleet_cap,
        },
    }
