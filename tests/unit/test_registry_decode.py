"""Decoding an instance hash: numbers parsed, empty and unparsable values as None, other
fields as text; the fleet view's flat decoder and ``decode_record`` agree."""

from __future__ import annotations

from typing import get_type_hints

import fakeredis
import pytest

from coordinator.contract.record import (
    FLOAT_FIELDS,
    INT_FIELDS,
    RECORD_FIELDS,
    InstanceRecord,
    RecordView,
    decode_fields,
    decode_record,
    raw_record,
)
from coordinator.instance.coordinator import Coordinator
from coordinator.settings import Settings

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


# -- the schema: one definition, every reader and writer on it -------------------------

def test_the_readers_view_has_exactly_the_records_fields_and_its_signature() -> None:
    assert tuple(RecordView.__annotations__) == (*RECORD_FIELDS, "sig")


def test_the_fields_are_parsed_by_the_type_the_schema_gives_them() -> None:
    hints = get_type_hints(InstanceRecord)

    def typed(kind: type) -> set[str]:
        return {n for n in RECORD_FIELDS if kind in getattr(hints[n], "__args__", (hints[n],))}

    assert typed(int) == INT_FIELDS and typed(float) == FLOAT_FIELDS
    assert {"pid", "fleet_cap"} <= INT_FIELDS and "ttl" in FLOAT_FIELDS
    assert "state" not in INT_FIELDS | FLOAT_FIELDS


@pytest.mark.parametrize("key", [None, "k1"])
def test_the_owner_writes_every_field_of_the_schema_and_nothing_else(key: str | None) -> None:
    coord = Coordinator(Settings(instance_id="web-1", signing_key=key),
                        client=fakeredis.aioredis.FakeRedis())
    assert coord.owner is not None
    written = coord.owner.record()
    assert tuple(written) == RECORD_FIELDS + (("sig",) if key else ())
    assert decode_record(written)["queue_max"] == 50  # and it reads back through the schema


async def test_an_index_of_another_type_is_healed_whatever_redis_py_words_the_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-py 6.x words a failed pipeline command "... caused error: {exception.args}",
    the server's WRONGTYPE lost: the heal asks the key its type instead."""
    from redis.exceptions import ResponseError

    from coordinator.contract.keys import Keys
    from coordinator.fleet import registry

    client = fakeredis.aioredis.FakeRedis()
    keys = Keys("heal")
    await client.set(keys.instances, "not a sorted set")
    real, calls = registry._write, []

    async def worded_as_6x(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise ResponseError("Command # 4 (ZADD {heal}:instances 1.0 i1) of pipeline "
                                "caused error: {exception.args}")
        return await real(*args, **kwargs)

    monkeypatch.setattr(registry, "_write", worded_as_6x)
    await registry.write_record(client, keys, {"id": "i1"}, 10.0, 1.0)
    assert await client.type(keys.instances) == b"zset"
    assert await client.zscore(keys.instances, "i1") == 1.0
    await client.aclose()
