"""Decoding an instance hash: numbers parsed, empty and unparsable values as None, other
fields as text; the fleet view's flat decoder and ``decode_record`` agree."""

from __future__ import annotations

import pytest

from coordinator.contract.record import decode_fields, decode_record, raw_record

RAW = {"state": "ready", "phase": "", "phase_index": "6", "queue_depth": "x",
       "heartbeat_at": "1795726098.481775", "ttl": "inf", "ready_at": "nan",
       "host": "<b>host</b>", "extra": "kept"}
DECODED = {"state": "ready", "phase": None, "phase_index": 6, "queue_depth": None,
           "heartbeat_at": 1795726098.481775, "ttl": None, "ready_at": None,
           "host": "<b>host</b>", "extra": "kept"}


def test_decode_record_parses_numbers_and_turns_empty_or_bad_values_into_none() -> None:
    assert decode_record(RAW) == DECODED


def test_decode_record_reads_bytes_and_replaces_bytes_that_are_not_utf8() -> None:
    raw = {k.encode(): v.encode() for k, v in RAW.items()} | {b"version": b"\xff1"}
    assert decode_record(raw) == DECODED | {"version": "\ufffd1"}


def test_decode_fields_of_the_flat_text_equals_decode_record() -> None:
    flat = [x for kv in RAW.items() for x in kv]
    assert decode_fields(flat) == DECODED


def test_decode_fields_refuses_a_field_without_a_value() -> None:
    with pytest.raises(ValueError, match="shorter"):  # zip(strict=True): a field left over
        decode_fields(["state", "ready", "phase"])


def test_raw_record_replaces_bytes_that_are_not_utf8_in_names_too() -> None:
    assert raw_record({b"\xfe": b"ok", b"state": b"\xffready"}) == {
        "\ufffd": "ok", "state": "\ufffdready"}


def test_numbers_no_reader_could_use_are_none() -> None:
    raw = {"phase_index": "9" * 4000, "queue_depth": "-5", "admitted": str(2 ** 60),
           "heartbeat_at": "1e300", "ttl": "-1", "started_at": "1e400", "pid": "0x10"}
    assert decode_record(raw) == dict.fromkeys(raw)
