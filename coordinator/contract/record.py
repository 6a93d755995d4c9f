"""The instance record (``N:instance:<id>``): its fields, their encoding as hash fields,
and when a reader counts it live."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coordinator.contract.events import MAX_TS

INT_FIELDS = frozenset({"phase_index", "phases_total", "queue_depth", "connections",
                        "queue_max", "admitted", "rejected", "held_leases", "fleet_cap", "pid"})


FLOAT_FIELDS = frozenset({"started_at", "updated_at", "heartbeat_at", "ttl", "phase_started_at",
                          "ready_at", "expected_ready_at"})


MAX_INT = 2 ** 53  # larger counts are garbage (and would not survive a JSON reader)


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
    return decode_fields([as_text(x) for kv in raw.items() for x in kv])


def decode_fields(flat: list[str]) -> dict[str, Any]:
    """``decode_record`` of a hash given as text, flat: [field, value, field, value, ...].

    The fleet view decodes every record of the fleet through here, so it is one plain
    loop (half the time of building a dict first and decoding that, bench/fleet_scale.py).
    """
    out: dict[str, Any] = {}
    pairs = iter(flat)
    for name, text in zip(pairs, pairs, strict=True):
        parse = _PARSERS.get(name)
        if text == "":
            out[name] = None
        elif parse is None:
            out[name] = text
        else:
            try:
                out[name] = parse(text)
            except ValueError:
                out[name] = None
    return out


def _count(text: str) -> int | None:
    """A non-negative integer that JSON and every reader can take (no 4,000 digits)."""
    value = int(text) if len(text) <= 20 else -1
    return value if 0 <= value <= MAX_INT else None


def _time(text: str) -> float | None:
    """A finite, non-negative number of seconds below MAX_TS (year 5138)."""
    value = float(text)
    return value if 0 <= value < MAX_TS else None


_PARSERS: dict[str, Any] = {**dict.fromkeys(INT_FIELDS, _count),
                            **dict.fromkeys(FLOAT_FIELDS, _time)}


def raw_record(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A hash as read from Redis, as text (what a signature covers)."""
    return {as_text(k): as_text(v) for k, v in raw.items()}


def is_live(record: Mapping[str, Any], now: float) -> bool:
    heartbeat, ttl = record.get("heartbeat_at"), record.get("ttl")
    if not isinstance(heartbeat, float) or not isinstance(ttl, float):
        return False
    return now - heartbeat <= ttl


def as_text(value: Any) -> str:
    """A value read from Redis as text (bytes that are not UTF-8 replaced)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
