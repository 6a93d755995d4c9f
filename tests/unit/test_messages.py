"""The event schema: round trip, every way a message is dropped, signing, drop counting."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging

import pytest

from coordinator.exceptions import InvalidMessage
from coordinator.messages import (
    MAX_MESSAGE_BYTES,
    DropCounter,
    Message,
    decode,
    encode,
    record_signature_ok,
    sign_record,
)

KEY = "test-signing-key"
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
        decode(data, **kwargs)  # type: ignore[arg-type]
    return info.value.reason


def test_round_trip_keeps_every_field() -> None:
    original = message(state="ready", duration=2.5, started_at=NOW - 10)
    data = encode(original)
    assert json.loads(data) == {"v": 1, "instance": "web-1", "event": "phase_completed",
                                "phase": "services", "phase_index": 5, "ts": NOW,
                                "state": "ready", "duration": 2.5, "started_at": NOW - 10}
    assert decode(data) == original
    assert decode(data.decode()) == original  # str as redis-py may hand it over


def test_extra_fields_cannot_override_the_schema_fields() -> None:
    data = encode(Message("web-1", "ready", None, None, NOW, {"v": 9, "instance": "other"}))
    decoded = json.loads(data)
    assert (decoded["v"], decoded["instance"]) == (1, "web-1")


def test_phase_and_index_may_be_null() -> None:
    decoded = decode(raw(body(event="draining", phase=None, phase_index=None)))
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
    assert decode(raw(fits)).extra["padding"]


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
    assert reason_of(b'{"v":1,"instance":"a","event":"ready","phase":null,'
                     b'"phase_index":null,"ts":NaN}') == "invalid_schema"


def test_message_for_another_instance_is_dropped() -> None:
    data = encode(message())
    assert decode(data, expected_instance="web-1").instance == "web-1"
    assert reason_of(data, expected_instance="web-2") == "wrong_instance"


def expected_signature(obj: dict[str, object]) -> str:
    unsigned = {k: v for k, v in obj.items() if k != "sig"}
    text = json.dumps(unsigned, sort_keys=True, separators=(",", ":"))
    return hmac.new(KEY.encode(), text.encode(), hashlib.sha256).hexdigest()


def test_signed_message_carries_an_hmac_over_its_canonical_json() -> None:
    data = encode(message(state="ready"), KEY)
    obj = json.loads(data)
    assert obj["sig"] == expected_signature(obj)
    assert len(obj["sig"]) == 64
    assert decode(data, signing_key=KEY, now=NOW + 1) == message(state="ready")


def test_unsigned_message_is_dropped_when_a_key_is_set() -> None:
    assert reason_of(encode(message()), signing_key=KEY, now=NOW) == "unsigned"
    assert reason_of(raw(body(sig=123)), signing_key=KEY, now=NOW) == "unsigned"


def test_forged_or_tampered_message_is_dropped() -> None:
    forged = encode(message(), "another-key")
    assert reason_of(forged, signing_key=KEY, now=NOW) == "bad_signature"
    obj = json.loads(encode(message(), KEY))
    obj["phase"] = "cache"  # tampered after signing
    assert reason_of(raw(obj), signing_key=KEY, now=NOW) == "bad_signature"


@pytest.mark.parametrize("skew", [-31.0, 31.0, 3600.0])
def test_stale_signed_message_is_dropped(skew: float) -> None:
    data = encode(message(), KEY)
    assert reason_of(data, signing_key=KEY, now=NOW + skew) == "stale"
    assert decode(data, signing_key=KEY, now=NOW + skew / abs(skew) * 29.0)


def test_unsigned_reader_ignores_a_signature() -> None:
    assert decode(encode(message(), KEY)) == message()


def test_record_signature_covers_the_state_fields() -> None:
    record = {"id": "web-1", "state": "starting", "phase": "cache", "phase_index": "4",
              "phases_total": "7", "started_at": "1.5", "updated_at": "2.5", "host": "h"}
    signed = {**record, "sig": sign_record(record, KEY)}
    assert record_signature_ok(signed, KEY)
    assert record_signature_ok(record, None)  # no key: nothing to check
    assert not record_signature_ok(record, KEY)  # unsigned
    assert not record_signature_ok({**signed, "state": "ready"}, KEY)  # tampered
    assert not record_signature_ok(signed, "another-key")


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
