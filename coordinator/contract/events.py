"""The event schema on the pub/sub channels: encoding and validation.

Anything that fails validation raises :class:`InvalidMessage` with a reason that names a
drop counter; a dropped message never crashes a reader and never releases a connection.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from coordinator.contract.keys import MAX_ID_CHARS, MAX_NAME_CHARS, printable_name
from coordinator.contract.phases import Event
from coordinator.contract.signing import Keyring
from coordinator.exceptions import InvalidMessage

SCHEMA_VERSION = 1


MAX_MESSAGE_BYTES = 4096


MAX_CLOCK_SKEW = 30.0


MAX_TS = 1e11  # year 5138: a larger (or negative) ts is garbage that would break readers


MAX_PHASES = 1000  # phase_index and phases_total beyond this are garbage


MAX_DURATION = 86400.0  # a phase's duration, seconds


EVENTS = frozenset(e.value for e in Event)


log = logging.getLogger("coordinator.messages")


class Drop(enum.StrEnum):
    """Why a message (or an instance record a follower read) was dropped: the reason of
    ``InvalidMessage``, the label of ``coordinator_dropped_messages``, the key of the
    health document's ``dropped_messages``."""

    OVERSIZED = "oversized"  # over MAX_MESSAGE_BYTES (discarded unread where it can be)
    INVALID_JSON = "invalid_json"  # not JSON, not UTF-8, NaN/Infinity, nested too deep
    INVALID_SCHEMA = "invalid_schema"  # not an object, or a field of the wrong type
    UNKNOWN_VERSION = "unknown_version"  # "v" is not SCHEMA_VERSION
    UNSIGNED = "unsigned"  # with a signing key: no "sig"
    BAD_SIGNATURE = "bad_signature"  # with a signing key: "sig" does not verify
    STALE = "stale"  # with a signing key: "ts" too far from the reader's clock
    WRONG_INSTANCE = "wrong_instance"  # on an instance's channel (or in its record): another's
    BAD_RECORD_SIGNATURE = "bad_record_signature"  # a record whose "sig" does not verify
    OUTBOX_FULL = "outbox_full"  # the owner's own event, no room to queue it (republished)


# Every message carries these; SCHEMA_VERSION is "v".
BASE_FIELDS = ("v", "instance", "event", "phase", "phase_index", "ts")


@dataclass(frozen=True)
class Message:
    instance: str
    event: str
    phase: str | None
    phase_index: int | None
    ts: float
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = dict(self.extra)
        body.update(v=SCHEMA_VERSION, instance=self.instance, event=self.event,
                    phase=self.phase, phase_index=self.phase_index, ts=self.ts)
        return body


def encode_event(message: Message, keyring: Keyring | None = None) -> bytes:
    body = message.to_dict()
    if keyring is not None:
        body["sig"] = keyring.sign("event", body)
    return json.dumps(body, separators=(",", ":")).encode()


def decode_event(raw: bytes | str, *, keyring: Keyring | None = None, now: float | None = None,
                 expected_instance: str | None = None) -> Message:
    """Validate one message off a channel; raise InvalidMessage(reason) to drop it.

    Whatever ``raw`` holds (any bytes, any JSON however nested, numbers of any size,
    NaN, lone surrogates), this returns a valid :class:`Message` or raises
    :class:`InvalidMessage`, and nothing else: readers count the drop and go on.
    """
    body = _parse(raw)
    message = _validated(body)
    if keyring is not None:
        _check_signature(body, keyring, message.ts, time.time() if now is None else now)
    if expected_instance is not None and message.instance != expected_instance:
        raise InvalidMessage(Drop.WRONG_INSTANCE, message.instance)
    return message


def _parse(raw: bytes | str) -> dict[str, Any]:
    """The message's JSON object, of at most MAX_MESSAGE_BYTES, in schema version 1."""
    if isinstance(raw, Oversized):
        raise InvalidMessage(Drop.OVERSIZED, f"{raw.length} bytes, discarded unread")
    if isinstance(raw, str):
        raw = raw.encode(errors="surrogatepass")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(Drop.OVERSIZED, f"{len(raw)} bytes")
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # bad JSON or UTF-8, NaN/Infinity, deep nesting
        raise InvalidMessage(Drop.INVALID_JSON) from None
    if not isinstance(body, dict):
        raise InvalidMessage(Drop.INVALID_SCHEMA, "not a JSON object")
    if body.get("v") != SCHEMA_VERSION or isinstance(body.get("v"), bool):
        raise InvalidMessage(Drop.UNKNOWN_VERSION, repr(body.get("v"))[:20])
    return body


def _validated(body: dict[str, Any]) -> Message:
    """The message, each field checked against the schema (BASE_FIELDS, EXTRA_FIELDS)."""
    instance, event, phase = body.get("instance"), body.get("event"), body.get("phase")
    phase_index, ts = body.get("phase_index"), body.get("ts")
    for name, ok in (("instance", printable_name(instance, MAX_ID_CHARS)),
                     ("event", isinstance(event, str) and event in EVENTS),
                     ("phase", phase is None or printable_name(phase, MAX_NAME_CHARS)),
                     ("phase_index", phase_index is None or _count(phase_index)),
                     ("ts", _number(ts, MAX_TS))):
        if not ok:
            raise InvalidMessage(Drop.INVALID_SCHEMA, name)
    extra = {k: v for k, v in body.items() if k not in BASE_FIELDS and k != "sig"}
    for name, value in extra.items():
        if not _EXTRA_OK.get(name, _scalar)(value):
            raise InvalidMessage(Drop.INVALID_SCHEMA, name[:32])
    # Checked above (the checks are typed as bool, so the types are restated here).
    return Message(cast(str, instance), cast(str, event), phase, phase_index,
                   float(cast(float, ts)), extra)


def _check_signature(body: dict[str, Any], keyring: Keyring, ts: float, now: float) -> None:
    if not isinstance(body.get("sig"), str):
        raise InvalidMessage(Drop.UNSIGNED)
    if not keyring.verify("event", body):
        raise InvalidMessage(Drop.BAD_SIGNATURE)
    if abs(now - ts) > MAX_CLOCK_SKEW:
        raise InvalidMessage(Drop.STALE, f"{now - ts:.1f}s")


class Oversized(bytes):
    """What the subscription's reader hands over in place of a message larger than
    :data:`MAX_MESSAGE_BYTES`, which it discarded without keeping it (wire.py)."""

    length: int

    def __new__(cls, length: int) -> Oversized:
        self = super().__new__(cls)
        self.length = length
        return self


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _count(value: object) -> bool:
    """An int (not a bool) from 1 to MAX_PHASES."""
    return type(value) is int and 1 <= value <= MAX_PHASES


def _number(value: object, limit: float) -> bool:
    """An int or float (not a bool, not NaN) from 0 up to (not including) ``limit``."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and 0 <= value < limit)


def _scalar(value: object) -> bool:
    """Extra fields are flat: no object or array, whose depth could hurt a reader."""
    return value is None or isinstance(value, (str, int, float, bool))


# The extra fields readers act on, and what each must be when present. Any other extra
# field must be a scalar (_scalar).
_EXTRA_OK: dict[str, Any] = {
    "state": lambda v: isinstance(v, str),  # the instance's State after the event
    "started_at": lambda v: v is None or _number(v, MAX_TS),  # its life (the record's)
    "phases_total": lambda v: v is None or _count(v),
    "duration": lambda v: _number(v, MAX_DURATION),  # phase_completed: seconds it took
    "error": lambda v: isinstance(v, str),  # failed: what raised (at most 200 characters)
}
EXTRA_FIELDS = tuple(_EXTRA_OK)
MESSAGE_FIELDS = (*BASE_FIELDS, *EXTRA_FIELDS, "sig")  # sig: with a signing key


class DropCounter:
    """Counts dropped messages by reason and logs them at most once per interval."""

    def __init__(self, interval: float = 10.0, clock: Any = time.monotonic) -> None:
        self.counts: Counter[str] = Counter()
        self.interval = interval
        self.clock = clock
        self._last_log = -math.inf
        self._unlogged = 0

    def drop(self, error: InvalidMessage, channel: str) -> None:
        self.counts[error.reason] += 1
        self._unlogged += 1
        now = self.clock()
        if now - self._last_log >= self.interval:
            log.warning("dropped %d invalid message(s) on %s; latest: %s (totals %s)",
                        self._unlogged, channel, error,
                        {str(reason): n for reason, n in self.counts.items()})
            self._last_log = now
            self._unlogged = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())
