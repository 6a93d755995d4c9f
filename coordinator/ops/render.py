"""The fleet and its events as text: pure functions, no I/O.

``coordinator fleet`` and ``coordinator events`` print through these, and so does the
demo; any other front end can too. Every string that came from Redis passes through
:func:`printable` before it reaches a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from coordinator.contract.events import decode_event
from coordinator.contract.signing import Keyring
from coordinator.exceptions import InvalidMessage

CLEAR_SCREEN = "\x1b[H\x1b[2J"
BAR_WIDTH = 10
COLUMNS = ("INSTANCE", "STATE", "PHASE", "IN PHASE", "QUEUE", "OPEN", "LEASES", "ADMITTED",
           "REJECTED", "HEARTBEAT", "READY IN", "VERSION", "HOST")


def render_fleet_table(doc: Mapping[str, Any]) -> str:
    """The fleet document as aligned columns and a totals line, readable at a glance."""
    generated = doc.get("generated_at")
    clock = time.strftime("%H:%M:%S", time.localtime(generated)) if generated else "-"
    instances = doc.get("instances") or []
    lines = [printable(f"fleet {doc.get('namespace')} at {clock}: {len(instances)} live "
                       "instance(s)")]
    if instances:
        rows = [COLUMNS] + [tuple(map(printable, _row(r))) for r in instances]
        widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                  for row in rows]
    lines.append(printable(_totals_line(doc.get("totals") or {})))
    if doc.get("truncated"):
        lines.append(f"(truncated: the index holds {doc.get('index_size')} members; the most "
                     "recent were read)")
    return "\n".join(lines)


def _row(r: Mapping[str, Any]) -> tuple[str, ...]:
    cap = r.get("queue_max")
    return (
        str(r.get("id")),
        str(r.get("state") or "-"),
        phase_progress(r.get("phase"), r.get("phase_index"), r.get("phases_total")),
        duration(r.get("time_in_phase")),
        f"{r.get('queue_depth') or 0}/{cap if cap is not None else '-'}",
        str(r.get("connections") or 0),
        str(r.get("held_leases") or 0),
        str(r.get("admitted") or 0),
        str(r.get("rejected") or 0),
        duration(r.get("heartbeat_age")) + " ago" if r.get("heartbeat_age") is not None else "-",
        "~" + duration(r.get("expected_ready_in")) if r.get("expected_ready_in") is not None
        else "-",
        str(r.get("version") or "-"),
        str(r.get("host") or "-"),
    )


def _totals_line(t: Mapping[str, Any]) -> str:
    states = ", ".join(f"{n} {s}" for s, n in (t.get("by_state") or {}).items() if n)
    cap = t.get("fleet_cap")
    leases = f"leases {t.get('leases', 0)}/{cap} (fleet cap)" if cap is not None \
        else "no fleet cap"
    return (f"totals: {t.get('instances', 0)} instance(s) ({states or 'none'}); "
            f"ready {round(100 * float(t.get('ready_ratio') or 0))}%; "
            f"held {t.get('held', 0)}/{t.get('queue_max', 0)}; open {t.get('connections', 0)}; "
            f"{leases}; "
            f"admitted {t.get('admitted', 0)}; rejected {t.get('rejected', 0)}")


def phase_progress(phase: Any, index: Any, total: Any, bar: bool = True) -> str:
    """``services 5/7 [#####--]``: the phase, its position and (if ``bar``) a tiny bar."""
    if not isinstance(index, int) or not isinstance(total, int) or total < 1:
        return str(phase or "-")
    position = f"{phase or '-'} {index}/{total}"
    if not bar:
        return position
    width = min(total, BAR_WIDTH)
    filled = max(0, min(width, round(width * index / total)))
    return f"{position} [{'#' * filled}{'-' * (width - filled)}]"


def duration(seconds: Any) -> str:
    """``0.4s``, ``12s``, ``4m05s``, ``2h03m``; ``-`` when unknown."""
    if not isinstance(seconds, (int, float)):
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def render_event(data: bytes | str, keyring: Keyring | None) -> str:
    """One channel message as one line: time, instance, event, phase k/n, details."""
    try:
        msg = decode_event(data, keyring=keyring)
    except InvalidMessage as exc:
        return printable(f"{_clock(time.time())}  -  dropped invalid message ({exc})")
    total = msg.extra.get("phases_total")
    where = (f"{msg.phase or '-'} {msg.phase_index}/{total}"
             if msg.phase_index is not None and isinstance(total, int) else msg.phase or "-")
    details = []
    if isinstance(msg.extra.get("duration"), (int, float)):
        details.append(f"took {msg.extra['duration']:.3f}s")
    if msg.extra.get("error"):
        details.append(f"error: {msg.extra['error']}")
    line = f"{_clock(msg.ts)}  {msg.instance}  {msg.event:<15}  {where}"
    return printable(f"{line}  {'; '.join(details)}" if details else line)


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))}


def printable(text: str) -> str:
    """Text from Redis with its control characters (and lone surrogates, which no
    terminal encoding takes) escaped: an instance id, host or error message cannot move
    the cursor, clear the screen or retitle the terminal, nor make a print raise."""
    return text.translate(_CONTROL).encode("utf-8", "backslashreplace").decode("utf-8")


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"
