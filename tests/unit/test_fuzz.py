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

from coordinator.contract.events import MAX_MESSAGE_BYTES, Message, decode_event, encode_event
from coordinator.contract.phases import PhasePlan, State
from coordinator.contract.record import (
    FLOAT_FIELDS,
    INT_FIELDS,
    decode_fields,
    decode_record,
    is_live,
    raw_record,
)
from coordinator.contract.signing import Keyring, record_signature_ok
from coordinator.exceptions import InvalidMessage
from coordinator.fleet.registry import parse_phase_stats
from coordinator.fleet.view import _view, decode_page, fleet_totals
from coordinator.instance.status import Status, advance, status_from_message, status_from_record
from coordinator.ops.cli import check_record
from coordinator.ops.render import render_event, render_fleet_table
from coordinator.settings import DEFAULT_PHASES

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
        body = json.loads(encode_event(Message("web-1", "ready", None, None, NOW), KEY))
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
    assert decode_event(encode_event(msg)) == msg


@FUZZ
@given(message_bytes)
def test_decode_of_anything_is_a_message_or_a_drop(data: bytes) -> None:
    for kwargs in ({}, {"keyring": KEY, "now": NOW}, {"expected_instance": "web-1"}):
        for raw in (data, data.decode("utf-8", "surrogateescape")):
            try:
                msg = decode_event(raw, **kwargs)
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


# -- instance hashes, phase statistics, the fleet view's pages ------------------------


PLAN = PhasePlan(DEFAULT_PHASES, "services")
FIELDS = sorted(INT_FIELDS | FLOAT_FIELDS | {"id", "state", "phase", "host", "version", "sig"})
field_text = (st.text(max_size=30) | st.sampled_from(["", "nan", "inf", "-1", "1e300", "1e400",
                                                      "9" * 400, "ready", "1.5", " 7 "])
              | st.integers().map(str) | st.floats().map(repr))
raw_records = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), field_text,
                              max_size=12)
raw_bytes_records = st.dictionaries(st.binary(max_size=12), st.binary(max_size=30), max_size=8)


def controls_free(text: str) -> bool:
    return not any((ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) < 0xa0 for c in text)


@FUZZ
@given(raw_records | raw_bytes_records)
def test_a_record_of_anything_decodes_to_values_every_reader_can_use(raw: dict[Any, Any]) -> None:
    record: dict[str, Any] = dict(decode_record(raw))
    for name in INT_FIELDS & set(record):
        assert record[name] is None or (type(record[name]) is int and 0 <= record[name] <= 2 ** 53)
    for name in FLOAT_FIELDS & set(record):
        assert record[name] is None or (isinstance(record[name], float)
                                        and math.isfinite(record[name]))
    live = is_live(decode_record(raw), NOW)
    status = status_from_record(decode_record(raw))
    assert status is None or isinstance(status.state, State)
    if status is not None:
        advance(Status(), status, trusted=False)
        advance(Status(State.READY, "services", 5, None, NOW), status)
    code, line = check_record("web-1", "coord", raw_record(raw), KEY, NOW)  # as check reads it
    assert code in (0, 1) and isinstance(line, str)
    code, line = check_record("web-1", "coord", raw_record(raw), None, NOW)
    assert code in (0, 1) and isinstance(line, str)
    if live and record.get("heartbeat_at") is not None:
        view = _view("web-1", decode_record(raw), NOW, NOW, {})
        table = render_fleet_table({"namespace": "coord", "generated_at": NOW,
                                    "instances": [view], "totals": fleet_totals([view], 0)})
        assert controls_free(table)


@FUZZ
@given(st.lists(field_text, max_size=12))
def test_decode_fields_of_any_flat_text_is_a_record_or_a_value_error(flat: list[str]) -> None:
    try:
        decode_fields(flat)
    except ValueError:
        assert len(flat) % 2 == 1  # the one documented refusal: a field without a value


@FUZZ
@given(json_values.map(lambda v: json.dumps(v, allow_nan=True)) | st.binary(max_size=300),
       st.integers(0, 5))
def test_a_page_of_anything_is_records_or_a_value_error(raw: str | bytes, expected: int) -> None:
    try:
        rows = decode_page(raw, expected)
    except (ValueError, RecursionError):  # the caller reads the page another way
        return
    assert len(rows) == expected and all(isinstance(r, dict) for r in rows)


@FUZZ
@given(st.lists(st.none() | st.binary(max_size=40) | field_text, max_size=8))
def test_phase_statistics_of_anything_are_clamped_seconds(values: list[Any]) -> None:
    phases = DEFAULT_PHASES[:len(values)]
    stats = parse_phase_stats(phases, values)
    assert set(stats) <= set(phases)
    assert all(0 <= v <= 3600 and math.isfinite(v) for v in stats.values())


@FUZZ
@given(message_bytes)
def test_a_message_of_anything_renders_on_one_escaped_line_or_moves_a_view(data: bytes) -> None:
    line = render_event(data, KEY)
    assert "\n" not in line and controls_free(line)
    try:
        msg = decode_event(data)
    except InvalidMessage:
        return
    try:
        status = status_from_message(msg, PLAN)
    except ValueError:
        raise AssertionError("status_from_message raised") from None
    if status is not None:
        advance(Status(), status, trusted=False)
