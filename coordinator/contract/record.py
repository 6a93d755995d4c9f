"""The instance record (``N:instance:<id>``): its fields, written once.

:class:`InstanceRecord` is the record as its owner writes it: every field, typed; adding
one means its writer must supply it. :meth:`InstanceRecord.encode` turns it into the
hash's text. Readers never get an :class:`InstanceRecord` back (a hash in Redis may hold
anything): :func:`decode_record` gives a :class:`RecordView`, the same fields, each
parsed by the type the schema gives it, ``None`` where empty or unreadable, and whatever
else the hash held as text. :data:`RECORD_FIELDS` is the field list every other part
(the fleet view, docs/redis-contract.md's test, the dashboard's test) takes from here.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, get_type_hints

from coordinator.contract.events import MAX_TS


class CapMode(enum.StrEnum):
    """How the cap on held connections is enforced now: the record's ``fleet_cap_mode``."""

    FLEET = "fleet"  # by leases in Redis (COORD_FLEET_MAX_QUEUE)
    LOCAL = "local"  # a fleet cap is set but Redis is unavailable: the local cap alone
    OFF = "off"  # no fleet cap is set


class Link(enum.StrEnum):
    """The record's ``redis`` field: whether the writer's Redis link is up."""

    OK = "ok"
    DOWN = "down"


@dataclass(frozen=True, kw_only=True)
class InstanceRecord:
    """One instance as its owner writes it, whole, at every transition and heartbeat.

    Times are unix seconds, durations seconds; ``None`` is written as an empty string.
    """

    id: str
    state: str  # a State value
    phase: str | None  # the current or last phase; None before the first
    phase_index: int | None  # its 1-based position
    phases_total: int
    started_at: float | None  # this life of the instance
    updated_at: float  # the last transition
    heartbeat_at: float  # the last write; N:instances' score
    phase_started_at: float | None
    ready_at: float | None  # when the ready phase completed
    expected_ready_at: float | None  # from N:phase_stats, while starting
    ttl: float  # the record expires this long after heartbeat_at
    queue_depth: int  # handshakes held now
    connections: int  # open connections handed to the app
    queue_max: int  # the local hold cap (COORD_MAX_QUEUE)
    held_leases: int  # this instance's leases in N:leases
    fleet_cap_mode: CapMode
    fleet_cap: int | None  # COORD_FLEET_MAX_QUEUE
    admitted: int
    rejected: int
    redis: Link
    host: str
    pid: int
    version: str  # the library's

    def encode(self) -> dict[str, str]:
        """The hash's fields as text, every one of them (a write replaces the record)."""
        return encode_fields({name: getattr(self, name) for name in RECORD_FIELDS})


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(InstanceRecord))


class RecordView(TypedDict, total=False):
    """A record as read: :class:`InstanceRecord`'s fields, each parsed (None where empty
    or unreadable), plus ``sig`` with a signing key. Any field may be missing."""

    id: str | None
    state: str | None
    phase: str | None
    phase_index: int | None
    phases_total: int | None
    started_at: float | None
    updated_at: float | None
    heartbeat_at: float | None
    phase_started_at: float | None
    ready_at: float | None
    expected_ready_at: float | None
    ttl: float | None
    queue_depth: int | None
    connections: int | None
    queue_max: int | None
    held_leases: int | None
    fleet_cap_mode: str | None
    fleet_cap: int | None
    admitted: int | None
    rejected: int | None
    redis: str | None
    host: str | None
    pid: int | None
    version: str | None
    sig: str | None


MAX_INT = 2 ** 53  # larger counts are garbage (and would not survive a JSON reader)


def _count(text: str) -> int | None:
    """A non-negative integer that JSON and every reader can take (no 4,000 digits)."""
    value = int(text) if len(text) <= 20 else -1
    return value if 0 <= value <= MAX_INT else None


def _time(text: str) -> float | None:
    """A finite, non-negative number of seconds below MAX_TS (year 5138)."""
    value = float(text)
    return value if 0 <= value < MAX_TS else None


def _parser(annotation: Any) -> Callable[[str], Any] | None:
    """How a field of this type is read back: counts and times parsed, text kept."""
    args = set(getattr(annotation, "__args__", (annotation,)))
    if int in args:
        return _count
    if float in args:
        return _time
    return None


_HINTS = get_type_hints(InstanceRecord)
_PARSERS: dict[str, Callable[[str], Any]] = {
    name: parse for name in RECORD_FIELDS if (parse := _parser(_HINTS[name])) is not None}
INT_FIELDS = frozenset(n for n, p in _PARSERS.items() if p is _count)
FLOAT_FIELDS = frozenset(n for n, p in _PARSERS.items() if p is _time)


def encode_fields(fields: Mapping[str, object]) -> dict[str, str]:
    """Field values as the hash holds them: None as "", floats to the microsecond."""
    return {name: _text(value) for name, value in fields.items()}


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".")
    return str(value)


def decode_record(raw: Mapping[Any, Any]) -> RecordView:
    """A hash as read from Redis, with numbers parsed and empty strings as None."""
    return decode_fields([as_text(x) for kv in raw.items() for x in kv])


def decode_fields(flat: list[str]) -> RecordView:
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
    return out  # type: ignore[return-value]  # a hash may hold any field: see RecordView


def raw_record(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A hash as read from Redis, as text (what a signature covers)."""
    return {as_text(k): as_text(v) for k, v in raw.items()}


MAX_TTL = 3600.0  # COORD_INSTANCE_TTL's ceiling: a longer ttl is no instance's


def is_live(record: RecordView, now: float) -> bool:
    """Whether the record's last heartbeat is within its ``ttl`` of ``now``; a ttl above
    MAX_TTL counts as MAX_TTL (a forged ttl of 1e10 once kept a record live for centuries)."""
    heartbeat, ttl = record.get("heartbeat_at"), record.get("ttl")
    if not isinstance(heartbeat, float) or not isinstance(ttl, float):
        return False
    return now - heartbeat <= min(ttl, MAX_TTL)


def as_text(value: Any) -> str:
    """A value read from Redis as text (bytes that are not UTF-8 replaced)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
