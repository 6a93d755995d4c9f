"""docs/redis-contract.md against the code that writes and reads Redis: every key and
channel of ``Keys``, every field of the instance record as an owner writes it, every
field of an event message, every event, state and rejection reason, every drop reason,
the admission bucket's fields and every Lua script are documented, and the document
lists nothing the code does not have. A field added in the code and not documented
fails here."""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import re
from typing import Any

import fakeredis
import pytest

from coordinator import Coordinator, Event, Keys, Reason, Settings, State
from coordinator.contract import events, record
from coordinator.contract.events import Drop, decode_event, encode_event
from coordinator.gate.pacing import ADMIT
from tests.support import ROOT, record_of

DOC = (ROOT / "docs" / "redis-contract.md").read_text()
PACKAGE = ROOT / "coordinator"


def section(title: str) -> str:
    """The text under the heading ``title`` (any level), up to the next heading."""
    match = re.search(rf"^#{{2,6}} {re.escape(title)}\n(.*?)(?=^#{{1,6}} |\Z)", DOC, re.M | re.S)
    assert match, f"docs/redis-contract.md has no section {title!r}"
    return match[1]


def first_column(text: str) -> set[str]:
    """The code span that starts each table row of ``text``, header rows left out."""
    lines = text.splitlines()
    return {match[1] for line, after in zip(lines, [*lines[1:], ""], strict=True)
            if not after.startswith("| ---") and (match := re.match(r"\| `([^`]+)` \|", line))}


def owner(signing_key: str | None = "k") -> Coordinator:
    """An owner that never connects (fakeredis), signing as with COORD_SIGNING_KEY."""
    settings = Settings(instance_id="x", environment="test", signing_key=signing_key)
    return Coordinator(settings, client=fakeredis.aioredis.FakeRedis())


# -- keys and channels ------------------------------------------------------------------

def key_patterns() -> set[str]:
    """Every key and channel ``Keys`` names, with ``N`` for the namespace and ``<id>`` for
    an instance id: each property, and each method of one instance id, whose value is a
    name in the namespace."""
    keys = Keys("N")
    found = set()
    for name, _member in inspect.getmembers(Keys):
        if name.startswith("_"):
            continue
        static = inspect.getattr_static(Keys, name)
        if isinstance(static, property):
            value = getattr(keys, name)
        elif inspect.isfunction(static) and list(inspect.signature(static).parameters) == [
                "self", "instance_id"]:
            value = getattr(keys, name)("<id>")
        else:
            continue
        if isinstance(value, str) and value.startswith(keys.prefix) and value != keys.prefix:
            found.add(value)
    return found


def test_the_key_patterns_are_found_in_the_code() -> None:
    assert {"{N}:instance:<id>", "{N}:events", "{N}:instance:<id>:events"} <= key_patterns()


def test_every_key_and_channel_is_documented_and_none_other() -> None:
    assert first_column(section("Keys and channels")) == key_patterns()


# -- the instance record ------------------------------------------------------------------

def record_fields() -> set[str]:
    """The instance hash's fields: the record's schema (``RECORD_FIELDS``), with ``sig``
    (written with a signing key), and whatever an owner really writes, signing."""
    schema = set(vars(record).get("RECORD_FIELDS", ()))
    return schema | {"sig"} | set(record_of(owner()))


def test_the_owner_writes_the_record_fields_it_is_known_for() -> None:
    assert {"id", "state", "heartbeat_at", "ttl", "sig"} <= record_fields()


def test_every_instance_record_field_is_documented_and_none_other() -> None:
    documented = first_column(section("The instance record"))
    assert documented == record_fields(), (sorted(record_fields() - documented),
                                           sorted(documented - record_fields()))


# -- events -------------------------------------------------------------------------------

async def published_messages() -> list[dict[str, Any]]:
    """Every message an owner publishes on its way through a phase, the ready phase, a
    failure, a drain and a stop, as it goes on the channel (signed)."""
    coord = owner()
    assert coord.owner is not None
    plan = coord.plan
    for phase in plan.phases[:plan.ready_index]:
        async with coord.phase(phase):
            pass
    with pytest.raises(RuntimeError):
        async with coord.phase(plan.phases[plan.ready_index]):
            raise RuntimeError("boom")
    outbox = coord.owner.outbox
    messages = [outbox.get_nowait() for _ in range(outbox.qsize())]
    messages += [coord.owner.message(Event.DRAINING), coord.owner.message(Event.STOPPED)]
    return [json.loads(encode_event(m, coord.keyring)) for m in messages]


def message_fields() -> set[str]:
    """Every field of a message: what an owner publishes, and every optional field the
    events module validates."""
    fields = {name for body in asyncio.run(published_messages()) for name in body}
    return fields | set(vars(events).get("_EXTRA_OK", {}))


def test_the_owner_publishes_every_event_with_its_own_fields() -> None:
    bodies = asyncio.run(published_messages())
    assert {b["event"] for b in bodies} == {e.value for e in Event}
    assert {"duration", "error", "sig", "v"} <= message_fields()
    coord = owner()
    for body in bodies:  # each as a reader with the key accepts it
        decode_event(json.dumps(body), keyring=coord.keyring, now=body["ts"])


def test_every_message_field_is_documented_and_none_other() -> None:
    documented = first_column(section("Events"))
    assert documented == message_fields(), (sorted(message_fields() - documented),
                                            sorted(documented - message_fields()))


def test_every_event_is_documented_and_none_other() -> None:
    assert first_column(section("Event names")) == {e.value for e in Event}


def dropped_reasons() -> set[str]:
    """Every reason the package drops a message or record for: the ``Drop`` values, and
    the package's source raises or counts a drop by no other name."""
    named = {d.value for d in Drop}
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        assert not re.findall(r'(?:InvalidMessage|count_drop)\(\s*"(\w+)"', source), path
        for member in re.findall(r"(?:InvalidMessage|count_drop)\(\s*Drop\.(\w+)", source):
            assert Drop[member].value in named
    return named


def test_every_drop_reason_is_documented_and_none_other() -> None:
    assert {"oversized", "invalid_json", "unsigned", "stale"} <= dropped_reasons()
    assert first_column(section("Dropped messages")) == dropped_reasons()


# -- states, rejections -------------------------------------------------------------------

def test_every_state_is_documented_and_none_other() -> None:
    assert first_column(section("States")) == {s.value for s in State}


def test_every_rejection_reason_is_documented_and_none_other() -> None:
    assert first_column(section("Rejections")) == {r.value for r in Reason}


# -- the admission bucket and the scripts -------------------------------------------------

def test_the_admission_buckets_fields_are_the_ones_its_script_writes() -> None:
    written = set(re.findall(r"'HGET', KEYS\[1\], '(\w+)'", ADMIT))
    assert written == {"tokens", "at"}
    assert first_column(section("The admission bucket: `{N}:admit`")) == written


def lua_scripts() -> dict[str, str]:
    """Every Lua script of the package: a module-level text that calls ``redis.call``,
    by its name, with the file that defines it."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str) and "redis.call(" in node.value.value):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        found[target.id] = path.relative_to(ROOT).as_posix()
    return found


def test_every_lua_script_is_documented_with_its_module_and_none_other() -> None:
    scripts = lua_scripts()
    assert {"ACQUIRE", "RELEASE", "ADMIT", "READ_INDEX"} <= set(scripts)
    table = dict(re.findall(r"^\| `(\w+)` \| `([\w/.]+)` \|", section("Lua scripts"), re.M))
    assert table == scripts
