"""What the CLI prints from Redis data is text, never terminal control sequences."""

from __future__ import annotations

import json

from coordinator.ops.render import printable, render_event, render_fleet_table

HOSTILE = "x\x1b]0;owned\x07\x1b[2J\x9b31m"


def test_printable_escapes_c0_and_c1_controls_and_keeps_other_text() -> None:
    assert printable(HOSTILE + " é") == "x\\x1b]0;owned\\x07\\x1b[2J\\x9b31m é"


def test_the_fleet_table_escapes_hostile_ids_and_hosts() -> None:
    doc = {"namespace": "n", "instances": [{"id": HOSTILE, "host": HOSTILE}], "totals": {}}
    table = render_fleet_table(doc)
    assert "\x1b" not in table and "\x07" not in table and "\x9b" not in table
    assert table.count("x\\x1b]0;owned") == 2


def test_an_event_line_escapes_its_error_and_drops_a_hostile_instance() -> None:
    data = json.dumps({"v": 1, "instance": "web-1", "event": "failed", "phase": "database",
                       "phase_index": 3, "ts": 1.0, "error": HOSTILE})
    line = render_event(data, None)
    assert "\x1b" not in line and "\x07" not in line and "failed" in line
    assert "x\\x1b]0;owned" in line
    hostile_id = render_event(data.replace('"web-1"', json.dumps(HOSTILE)), None)
    assert "\x1b" not in hostile_id and "dropped invalid message (invalid_schema" in hostile_id


def test_the_totals_line_escapes_a_state_from_redis() -> None:
    doc = {"namespace": "n", "instances": [{"id": "a", "state": HOSTILE}],
           "totals": {"instances": 1, "by_state": {HOSTILE: 1}, "fleet_cap": HOSTILE}}
    table = render_fleet_table(doc)
    assert "\x1b" not in table and "\x07" not in table and "\x9b" not in table
    assert "1 x\\x1b]0;owned" in table.splitlines()[-1]


def test_printable_escapes_lone_surrogates_that_no_terminal_can_encode() -> None:
    assert printable("a\ud800b").encode() == b"a\\ud800b"
