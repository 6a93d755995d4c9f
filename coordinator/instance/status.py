"""Waiting for the ready signal: how a remote status moves the local view forward.

A follower (a process that gates connections for an instance whose startup runs
elsewhere) learns the instance's status from three sources, fastest first: pub/sub
events on ``N:instance:<id>:events``, a read of the instance hash right after each
(re)subscribe, and re-reads of the hash on progressive intervals while anyone waits.
All three feed :func:`advance`, which only ever moves the view forward, so a late or
duplicated message cannot undo a release.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from coordinator.contract.events import Message
from coordinator.contract.phases import STATE_AFTER, Event, PhasePlan, State

FIRST_INTERVAL = 0.05
MAX_INTERVAL = 1.0
# started_at values this close are one incarnation: the hash stores it to the microsecond,
# messages carry it in full, and no instance restarts within a millisecond.
SAME_LIFE = 0.001

_RANK = {State.STARTING: 0, State.READY: 1, State.FAILED: 2, State.DRAINING: 2,
         State.STOPPED: 3}


def progressive_intervals(first: float = FIRST_INTERVAL, cap: float = MAX_INTERVAL,
                          factor: float = 2.0) -> Iterator[float]:
    """50 ms, 100 ms, 200 ms, ... doubling up to 1 s, then 1 s for ever."""
    interval = first
    while True:
        yield min(interval, cap)
        interval = min(interval * factor, cap)


@dataclass(frozen=True)
class Status:
    state: State = State.STARTING
    phase: str | None = None
    phase_index: int | None = None
    phase_started_at: float | None = None
    started_at: float | None = None  # the incarnation this status belongs to


def status_from_message(msg: Message, plan: PhasePlan) -> Status | None:
    event = Event(msg.event)
    started_at = msg.extra.get("started_at")
    started_at = float(started_at) if isinstance(started_at, (int, float)) else None
    if event in STATE_AFTER:
        state = STATE_AFTER[event]
    elif event is Event.PHASE_COMPLETED and msg.phase == plan.ready_phase:
        state = State.READY
    elif (index := plan.index(msg.phase)) is None:
        return None
    else:
        state = State.STARTING if index <= plan.ready_index else State.READY
    return Status(state, msg.phase, msg.phase_index, msg.ts, started_at)


def status_from_record(record: Mapping[str, Any]) -> Status | None:
    """The status a decoded instance hash (``registry.decode_record``) says, or None."""
    try:
        state = State(str(record.get("state")))
    except ValueError:
        return None
    phase = record.get("phase")
    index = record.get("phase_index")
    return Status(state, phase if isinstance(phase, str) and phase else None,
                  index if type(index) is int else None,
                  _float(record.get("phase_started_at")), _float(record.get("started_at")))


def advance(current: Status, incoming: Status, *, trusted: bool = True) -> Status:
    """The view after ``incoming``: forward only, except for a new incarnation.

    ``trusted=False``: the evidence may be a replay (a follower with a signing key is
    shown something stamped before it started following). It may still move the view
    within ``starting`` (a later phase, a newer life), never to another state: a
    replayed ``ready`` of an earlier life must not release anyone.
    """
    new = _merge(current, incoming)
    if not trusted and new.state is not current.state and new.state is not State.STARTING:
        return current
    return new


def _merge(current: Status, incoming: Status) -> Status:
    if (incoming.started_at is not None and current.started_at is not None
            and incoming.started_at > current.started_at + SAME_LIFE):
        return incoming  # the instance restarted: its new life starts from scratch
    if incoming.started_at is not None and current.started_at is not None \
            and incoming.started_at < current.started_at - SAME_LIFE:
        return current  # news from an earlier life
    merged_started = current.started_at if current.started_at is not None else incoming.started_at
    if _RANK[incoming.state] > _RANK[current.state]:
        return replace(incoming, started_at=merged_started)
    if _RANK[incoming.state] < _RANK[current.state]:
        return current
    if (incoming.phase_index or 0) > (current.phase_index or 0):
        return replace(incoming, started_at=merged_started)
    return current


def _float(value: Any) -> float | None:
    """A finite float from a number or its text; None for anything else."""
    if not isinstance(value, (int, float, str)) or isinstance(value, bool) or value == "":
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None
