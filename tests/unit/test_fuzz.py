"""Property-based tests: arbitrary bytes and JSON fed to every decoder of data read from
Redis. Each either returns what its caller can use or raises the one documented drop
(``InvalidMessage``; ``ValueError`` where a caller falls back to another read); nothing
else escapes, whatever a writer to the namespace put there.

Bounded (``max_examples``) so that the whole file runs in seconds on a slow CI machine.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.exceptions import InvalidMessage
from coordinator.messages import (MAX_MESSAGE_BYTES, Keyring, Message, decode, encode,
                                  record_signature_ok)

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
KEY = Keyring.of("fuzz-key,older-key", "coord")
NOW = 1_700_000_000.0

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2 ** 80, 2 ** 80)
           | st.floats() | st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=12)
VALID = {"v": 1, "instance": "web-1", "event": "phase_completed", "phase": "services",
         "phase_index": 5, "ts": NOW, "state": "ready", "started_at": NOW - 5,
         "phases_total": 7, "duration": 1.5}
# A valid message with some of its fields replaced, added or removed: reaches the checks
# beyond the JSON parse far more often than random bytes do.
near_valid = st.builds(
    lambda changes, removed: {**{k: v for k, v in VALID.items() if k not in removed},
                              **changes},
    st.dictionaries(st.sampled_from([*VALID, "sig", "error", "extra"]), json_values,
                    max_size=3),
    st.sets(st.sampled_from(list(VALID)), max_size=2))


def dumped(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


def signed(obj: dict[str, Any]) -> bytes:
    """``obj`` with a valid signature, if it is signable at all."""
    try:
        body = json.loads(encode(Message("web-1", "ready", None, None, NOW), KEY))
        body.update(obj)
        assert KEY is not None
        body["sig"] = KEY.sign("event", body)
        return dumped(body)
    except (TypeError, ValueError, RecursionError):
        return dumped(obj)


message_bytes = (st.binary(max_size=MAX_MESSAGE_BYTES + 64)
                 | json_values.map(dumped)
                 | near_valid.map(dumped)
                 | near_valid.map(signed)
                 | st.integers(1, 6000).map(lambda n: b"[" * n)
                 | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))


def check_message(msg: Message) -> None:
    """What every reader assumes of a decoded message."""
    assert isinstance(msg.instance, str) and msg.instance.isprintable()
    assert msg.phase is None or (isinstance(msg.phase, str) and msg.phase.isprintable())
    assert msg.phase_index is None or type(msg.phase_index) is int
    assert isinstance(msg.ts, float) and math.isfinite(msg.ts)
    for value in msg.extra.values():
        assert value is None or isinstance(value, (str, int, float, bool))
        assert not isinstance(value, float) or math.isfinite(value)
    json.dumps(msg.to_dict())  # the dashboard's SSE frame
    assert decode(encode(msg)) == msg


@FUZZ
@given(message_bytes)
def test_decode_of_anything_is_a_message_or_a_drop(data: bytes) -> None:
    for kwargs in ({}, {"keyring": KEY, "now": NOW}, {"expected_instance": "web-1"}):
        for raw in (data, data.decode("utf-8", "surrogateescape")):
            try:
                msg = decode(raw, **kwargs)  # type: ignore[arg-type]
            except InvalidMessage:
                continue
            check_message(msg)


@FUZZ
@given(st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=8),
       st.text(max_size=70))
def test_a_record_signature_check_of_anything_is_true_or_false(record: dict[str, str],
                                                               sig: str) -> None:
    assert record_signature_ok({**record, "sig": sig}, KEY) in (True, False)
    assert record_signature_ok(record, KEY) in (True, False)
