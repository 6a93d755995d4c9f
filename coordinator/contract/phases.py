"""The ordered startup phases and the states an instance moves through."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from coordinator.exceptions import UsageError


class State(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    STOPPED = "stopped"


class Event(enum.StrEnum):
    PHASE_STARTED = "phase_started"
    PHASE_COMPLETED = "phase_completed"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    STOPPED = "stopped"


# The state an event leaves the instance in, where the event alone decides it.
STATE_AFTER = {
    Event.READY: State.READY,
    Event.DRAINING: State.DRAINING,
    Event.FAILED: State.FAILED,
    Event.STOPPED: State.STOPPED,
}


@dataclass(frozen=True)
class PhasePlan:
    phases: tuple[str, ...]
    ready_phase: str
    near_ready_phases: int = 1

    def __post_init__(self) -> None:
        if self.ready_phase not in self.phases:
            raise UsageError(f"ready phase {self.ready_phase!r} is not one of {self.phases}")

    @property
    def total(self) -> int:
        return len(self.phases)

    @property
    def ready_index(self) -> int:
        """1-based position of the ready phase."""
        return self.phases.index(self.ready_phase) + 1

    def index(self, phase: str | None) -> int | None:
        """1-based position of ``phase``, or None when it is not in the plan."""
        if phase is None or phase not in self.phases:
            return None
        return self.phases.index(phase) + 1

    def is_near_ready(self, phase: str | None) -> bool:
        """At or past the first phase that still holds connections."""
        idx = self.index(phase)
        return idx is not None and idx >= self.ready_index - self.near_ready_phases

    def remaining_until_ready(self, phase: str) -> tuple[str, ...]:
        """The phases from ``phase`` up to and including the ready phase."""
        start = self.phases.index(phase)
        return self.phases[start:self.ready_index]
