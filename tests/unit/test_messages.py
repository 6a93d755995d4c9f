"""The event schema: round trip, every way a message is dropped, signing, drop counting."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping

import pytest

from coordinator.contract.events import (
    MAX_MESSAGE_BYTES,
    DropCounter,
    Message,
    decode_event,
    encode_event,
)
from coordinator.contract.signing import Keyring, record_signature_ok, sign_record
from coordinator.exceptions import InvalidMessage
from tests.support import keyring

KEY = "test-signing-key"
KR = keyring(KEY, "coord")
NOW = 1_700_000_000.0


def message(**extra: object) -> Message:
    return Message("web-1", "phase_completed", "services", 5, NOW, extra)


def body(**changes: object) -> dict[str, object]:
    out: dict[str, object] = {"v": 1, "instance": "web-1", "event": "ready",
                              "phase": "services", "phase_index": 5, "ts": NOW}
    out.update(changes)
    return out


def raw(obj: object) -> bytes:
    return json.dumps(obj).encode()


def reason_of(data: bytes | str, **kwargs: object) -> str:
    with pytest.raises(InvalidMessage) as info:
        decode_event(data, **kwargs)  # type: ignore[arg-type]
    return info.value.reason


def test_round_trip_keeps_every_field() -> None:
    original = message(state="ready", duration=2.5, started_at=NOW - 10)
    data = encode_event(original)
    assert json.loads(data) == {"v": 1, "instance": "web-1", "event": "phase_completed",
                                "phase": "services", "phase_index": 5, "ts": NOW,
                                "state": "ready", "duration": 2.5, "started_at": NOW - 10}
    assert decode_event(data) == original
    assert decode_event(data.decode()) == original  # str as redis-py may hand it over


def test_extra_fields_cannot_override_the_schema_fields() -> None:
    data = encode_event(Message("web-1", "ready", None, None, NOW, {"v": 9, "instance": "other"}))
    decoded = json.loads(data)
    assert (decoded["v"], decoded["instance"]) == (1, "web-1")


def test_phase_and_index_may_be_null() -> None:
    decoded = decode_event(raw(body(event="draining", phase=None, phase_index=None)))
    assert (decoded.phase, decoded.phase_index) == (None, None)


@pytest.mark.parametrize("data", [b"", b"{", b"not json", b"\xff\xfe", b"{'v': 1}"])
def test_invalid_json_is_dropped(data: bytes) -> None:
    assert reason_of(data) == "invalid_json"


@pytest.mark.parametrize("obj", [[], [body()], "ready", 1, None])
def test_non_object_is_dropped(obj: object) -> None:
    assert reason_of(raw(obj)) == "invalid_schema"


@pytest.mark.parametrize("version", [None, 0, 2, "1", 1.5, True])
def test_unknown_version_is_dropped(version: object) -> None:
    obj = body(v=version) if version is not None else {k: v for k, v in body().items()
                                                       if k != "v"}
    assert reason_of(raw(obj)) == "unknown_version"


def test_oversized_message_is_dropped_before_parsing() -> None:
    padded = body(padding="x" * MAX_MESSAGE_BYTES)
    assert len(raw(padded)) > 4096
    assert reason_of(raw(padded)) == "oversized"
    assert reason_of(b"[" * (MAX_MESSAGE_BYTES + 1)) == "oversized"  # never parsed
    fits = body(padding="x" * (MAX_MESSAGE_BYTES - len(raw(body(padding="")))))
    assert len(raw(fits)) == MAX_MESSAGE_BYTES
    assert decode_event(raw(fits)).extra["padding"]


@pytest.mark.parametrize("changes", [
    {"instance": None}, {"instance": ""}, {"instance": 7},
    {"event": None}, {"event": "exploded"}, {"event": 1},
    {"phase": 5}, {"phase": ["services"]},
    {"phase_index": 0}, {"phase_index": -1}, {"phase_index": "5"}, {"phase_index": 5.0},
    {"phase_index": True},
    {"ts": None}, {"ts": "now"}, {"ts": True},
])
def test_missing_or_invalid_fields_are_dropped(changes: dict[str, object]) -> None:
    assert reason_of(raw(body(**changes))) == "invalid_schema"


@pytest.mark.parametrize("field", ["instance", "event", "ts"])
def test_required_fields_must_be_present(field: str) -> None:
    obj = {k: v for k, v in body().items() if k != field}
    assert reason_of(raw(obj)) == "invalid_schema"


def test_non_finite_ts_is_dropped() -> None:
    # NaN and Infinity are not JSON (Python's parser accepts them unless told not to).
    assert reason_of(b'{"v":1,"instance":"a","event":"ready","phase":null,'
                     b'"phase_index":null,"ts":NaN}') == "invalid_json"
    assert reason_of(raw(body(ts=0)).replace(b'"ts": 0', b'"ts": 1e400')) == "invalid_schema"


def test_message_for_another_instance_is_dropped() -> None:
    data = encode_event(message())
    assert decode_event(data, expected_instance="web-1").instance == "web-1"
    assert reason_of(data, expected_instance="web-2") == "wrong_instance"


def expected_signature(obj: Mapping[str, object], kind: str = "event", key: str = KEY,
                       namespace: str = "coord") -> str:
    unsigned = {k: v for k, v in obj.items() if k != "sig"}
    text = f"{kind}\n{namespace}\n" + json.dumps(unsigned, sort_keys=True, separators=(",", ":"))
    return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()


def test_signed_message_carries_an_hmac_over_its_namespace_and_canonical_json() -> None:
    data = encode_event(message(state="ready"), KR)
    obj = json.loads(data)
    assert obj["sig"] == expected_signature(obj)
    assert len(obj["sig"]) == 64
    assert "namespace" not in obj  # bound, not transmitted
    assert decode_event(data, keyring=KR, now=NOW + 1) == message(state="ready")


def test_a_message_signed_for_another_namespace_is_forged_here() -> None:
    elsewhere = encode_event(message(), Keyring.of(KEY, "staging"))
    assert reason_of(elsewhere, keyring=KR, now=NOW) == "bad_signature"


def test_unsigned_message_is_dropped_when_a_key_is_set() -> None:
    assert reason_of(encode_event(message()), keyring=KR, now=NOW) == "unsigned"
    assert reason_of(raw(body(sig=123)), keyring=KR, now=NOW) == "unsigned"


def test_forged_or_tampered_message_is_dropped() -> None:
    forged = encode_event(message(), Keyring.of("another-key", "coord"))
    assert reason_of(forged, keyring=KR, now=NOW) == "bad_signature"
    obj = json.loads(encode_event(message(), KR))
    obj["phase"] = "cache"  # tampered after signing
    assert reason_of(raw(obj), keyring=KR, now=NOW) == "bad_signature"


@pytest.mark.parametrize("skew", [-31.0, 31.0, 3600.0])
def test_stale_signed_message_is_dropped(skew: float) -> None:
    data = encode_event(message(), KR)
    assert reason_of(data, keyring=KR, now=NOW + skew) == "stale"
    assert decode_event(data, keyring=KR, now=NOW + skew / abs(skew) * 29.0)


def test_unsigned_reader_ignores_a_signature() -> None:
    assert decode_event(encode_event(message(), KR)) == message()


def test_several_keys_rotate_the_first_signs_and_every_one_verifies() -> None:
    old, both, new = (Keyring.of(k, "coord") for k in ("old", " new , old ", "new"))
    assert both is not None and len(both.keys) == 2
    by_old, by_both = encode_event(message(), old), encode_event(message(), both)
    assert json.loads(by_both)["sig"] == expected_signature(json.loads(by_both), key="new")
    for data in (by_old, by_both):
        assert decode_event(data, keyring=both, now=NOW) == message()
    assert decode_event(by_both, keyring=new, now=NOW) == message()
    assert reason_of(by_old, keyring=new, now=NOW) == "bad_signature"  # rotation done
    assert Keyring.of(None, "coord") is None and Keyring.of(" , ", "coord") is None
    assert "new" not in repr(both) and "old" not in repr(both)


RECORD = {"id": "web-1", "state": "starting", "phase": "cache", "phase_index": "4",
          "phases_total": "7", "started_at": "1.5", "updated_at": "2.5", "host": "h",
          "heartbeat_at": "3.5", "ttl": "10"}


def test_record_signature_covers_every_field_and_the_namespace() -> None:
    signed = {**RECORD, "sig": sign_record(RECORD, KR)}
    assert signed["sig"] == expected_signature(RECORD, kind="record")
    assert record_signature_ok(signed, KR)
    assert record_signature_ok(RECORD, None)  # no key: nothing to check
    assert not record_signature_ok(RECORD, KR)  # unsigned
    for field, forged in [("state", "ready"), ("heartbeat_at", "9999999999"), ("ttl", "1e9"),
                          ("id", "web-2"), ("host", "elsewhere")]:
        assert not record_signature_ok({**signed, field: forged}, KR), field
    assert not record_signature_ok({**signed, "extra": "added"}, KR)
    assert not record_signature_ok(signed, Keyring.of(KEY, "staging"))
    assert not record_signature_ok(signed, Keyring.of("another-key", "coord"))


def test_a_record_signature_is_no_message_signature_and_back() -> None:
    obj = json.loads(encode_event(message(), KR))
    assert not record_signature_ok(obj, KR)
    as_record = {**obj, "sig": sign_record(obj, KR)}
    assert reason_of(raw(as_record), keyring=KR, now=NOW) == "bad_signature"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_drop_counter_counts_by_reason_and_rate_limits_its_log(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    drops = DropCounter(interval=10.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="coordinator.messages")
    for reason in ["invalid_json", "oversized", "invalid_json", "wrong_instance"]:
        drops.drop(InvalidMessage(reason), "coord:instance:a:events")
        clock.now += 1.0
    assert drops.counts == {"invalid_json": 2, "oversized": 1, "wrong_instance": 1}
    assert drops.total == 4
    assert len(caplog.records) == 1  # the first drop logs; the rest wait for the interval
    assert "coord:instance:a:events" in caplog.records[0].getMessage()

    clock.now += 10.0
    drops.drop(InvalidMessage("unknown_version", "2"), "coord:instance:a:events")
    assert len(caplog.records) == 2
    latest = caplog.records[1].getMessage()
    assert "dropped 4 invalid message(s)" in latest  # the three held back, plus this one
    assert "unknown_version" in latest
    assert drops.total == 5


@pytest.mark.parametrize("ts", [1e20, -1, 1e11])
def test_a_timestamp_no_clock_can_show_is_dropped(ts: float) -> None:
    # Finite, but time.localtime() overflows on it: readers that print it would crash.
    assert reason_of(raw(body(ts=ts))) == "invalid_schema"


# -- hostile input: every one of these once escaped as something other than a drop -----

def test_deep_nesting_is_invalid_json_not_a_recursion_error() -> None:
    assert reason_of(b"[" * 4000) == "invalid_json"
    assert reason_of(b"[" * 1100 + b"]" * 1100) == "invalid_json"  # well-formed, too deep


def test_a_signature_that_is_not_ascii_is_a_bad_signature_not_a_type_error() -> None:
    obj = {**json.loads(encode_event(message(), KR)), "sig": "\u00e9"}
    assert reason_of(raw(obj), keyring=KR, now=NOW) == "bad_signature"
    assert reason_of(raw({**obj, "sig": "ab" * 31 + "\u00e9\u00e9"}), keyring=KR,
                     now=NOW) == "bad_signature"
    record = {"id": "web-1", "state": "ready"}
    assert not record_signature_ok({**record, "sig": "\u00e9"}, KR)
    assert not record_signature_ok({**record, "sig": "\ud800"}, KR)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_anywhere_are_invalid_json(text: str) -> None:
    data = raw(body(started_at=0)).replace(b'"started_at": 0', f'"started_at": {text}'.encode())
    assert reason_of(data) == "invalid_json"


@pytest.mark.parametrize("changes", [
    {"started_at": 10 ** 400}, {"started_at": -1},
    {"started_at": "yesterday"}, {"started_at": True},
    {"phases_total": 10 ** 30}, {"phases_total": 0}, {"phases_total": 7.0},
    {"duration": -1}, {"duration": 10 ** 30}, {"duration": "2s"},
    {"state": 1}, {"error": ["boom"]},
    {"anything": [1]}, {"anything": {"deep": {}}},
    {"phase_index": 10 ** 30}, {"ts": 10 ** 400},
    {"instance": "web-1\x1b[2J"}, {"instance": "\ud800"},
    {"instance": "x" * 129}, {"phase": "services\n"}, {"phase": ""},
])
def test_wrong_types_and_sizes_are_invalid_schema(changes: dict[str, object]) -> None:
    assert reason_of(raw(body(**changes))) == "invalid_schema"


def test_a_number_too_large_for_a_float_is_invalid_schema() -> None:
    started = raw(body(started_at=0)).replace(b'"started_at": 0', b'"started_at": 1e400')
    assert reason_of(started) == "invalid_schema"  # Python parses it as inf


def test_bad_utf8_and_lone_surrogates_are_dropped() -> None:
    assert reason_of(raw(body()).replace(b"web-1", b"web-\xff")) == "invalid_json"
    assert reason_of(raw(body()).decode().replace("web-1", "web-\ud800")) == "invalid_schema"


def test_a_hostile_field_name_reaches_the_log_escaped_never_as_a_line_of_its_own(
        caplog: pytest.LogCaptureFixture) -> None:
    """The raw name of an invalid field once reached the text log: a line break and a
    forged "ERROR" line, escape sequences that recoloured or cleared the terminal."""
    forged = "x\nERROR forged\x1b[2J"  # a name is quoted up to 32 characters
    raw = json.dumps({"v": 1, "instance": "web-1", "event": "ready", "phase": None,
                      "phase_index": None, "ts": 100.0, forged: {"nested": 1}})
    caplog.set_level(logging.WARNING, logger="coordinator.messages")
    with pytest.raises(InvalidMessage) as caught:
        decode_event(raw)
    DropCounter(clock=FakeClock()).drop(caught.value, "coord:events")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "\n" not in line and "\x1b" not in line
    assert "x\\nERROR forged\\x1b[2J" in line  # still readable, escaped
    assert "'invalid_schema': 1" in line  # the totals by name
