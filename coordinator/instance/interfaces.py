"""What the coordinator, its role and its gates ask of one another, and nothing more.

The coordinator (:mod:`.coordinator`) is the host: it holds the status and the Redis
link. A role (:class:`~coordinator.instance.owner.Owner`,
:class:`~coordinator.instance.follower.Follower`) sees the host only as a
:class:`RoleHost`, and the host sees it only as a :class:`RolePart`; a gate
(:class:`~coordinator.gate.gate.ConnectionGate`) is seen by the host only as a
:class:`Gate`. Neither side imports the other's module, so there is no import circle and
no part calls another's private names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from coordinator.contract.record import CapMode

if TYPE_CHECKING:
    import redis.asyncio as redis

    from coordinator._tasks import TaskSet
    from coordinator.contract.events import Message
    from coordinator.contract.keys import Keys
    from coordinator.contract.phases import Event, PhasePlan, State
    from coordinator.contract.signing import Keyring
    from coordinator.exceptions import InvalidMessage
    from coordinator.instance.status import Status
    from coordinator.settings import Settings


@dataclass(frozen=True)
class GateCounts:
    """What a gate contributes to the instance record and the fleet view."""

    queue_depth: int = 0
    queue_max: int = 0
    held_leases: int = 0
    fleet_cap: int | None = None
    fleet_cap_mode: CapMode = CapMode.OFF
    admitted: int = 0
    rejected: int = 0
    connections: int = 0  # open: handed to the app and not yet closed

    @staticmethod
    def total(parts: list[GateCounts]) -> GateCounts:
        """Several gates' figures as one (the first gate's fleet cap and mode)."""
        if len(parts) == 1:
            return parts[0]
        return GateCounts(sum(p.queue_depth for p in parts), sum(p.queue_max for p in parts),
                          sum(p.held_leases for p in parts), parts[0].fleet_cap,
                          parts[0].fleet_cap_mode, sum(p.admitted for p in parts),
                          sum(p.rejected for p in parts), sum(p.connections for p in parts))


class Gate(Protocol):
    """What the coordinator asks of a gate attached to it (``ConnectionGate`` is one)."""

    def on_state(self, state: State) -> None:
        """The state changed: release or reject what is held. Synchronous, and called
        before anyone else hears of the change (release before publish)."""

    def on_link_up(self) -> None:
        """The Redis link came (back) up."""

    def observe(self, observer: Callable[..., None]) -> None:
        """Tell ``observer`` of every handshake's end (``coordinator.observe_gates``)."""

    def counts(self, link_up: bool) -> GateCounts:
        """The gate's figures for the instance record."""

    async def close_connections(self, *, timeout: float = 1.0, spread: float = 0.0) -> int:
        """Close every open connection with 1012 and end the app's sessions it was given,
        ``spread`` over that many seconds; return how many closed cleanly."""

    async def aclose(self) -> None:
        """The coordinator is stopping: give back what the gate holds in Redis."""


class RoleHost(Protocol):
    """What a role may use of the coordinator it serves."""

    settings: Settings
    id: str
    keys: Keys
    keyring: Keyring | None
    plan: PhasePlan
    redis: redis.Redis
    host: str
    version: str
    tasks: TaskSet
    status: Status
    updated_at: float
    ready_at: float | None
    redis_ok: bool

    @property
    def state(self) -> State: ...

    @property
    def is_ready(self) -> bool: ...

    @property
    def anyone_waiting(self) -> bool: ...

    def set_status(self, status: Status) -> None:
        """Move to ``status``: the gates act on it first, then waiters and listeners."""

    def link_lost(self, exc: BaseException) -> None:
        """A Redis command failed: gate on local state until the link is back."""

    def dropped(self, error: InvalidMessage, where: str) -> None:
        """Count (and, rate-limited, log) invalid data read from ``where``."""

    def count_drop(self, reason: str) -> None:
        """Count something of our own that was dropped (an event the outbox had no room
        for), where invalid messages are counted."""

    def fail(self, why: str, error: BaseException | None = None) -> None:
        """A phase failed (``error``: what it raised, logged with its traceback)."""

    def expected_ready_in(self, now: float | None = None) -> float | None:
        """Seconds until the ready phase should complete."""

    def gate_counts(self, link_up: bool = False) -> GateCounts:
        """The attached gates' figures, summed."""


class RolePart(Protocol):
    """What the coordinator asks of its role (owner or follower), chosen once."""

    def phase(self, name: str) -> contextlib.AbstractAsyncContextManager[None]: ...
    def start(self) -> None: ...
    async def on_link_up(self) -> None: ...
    def after_link_up(self, published: Status) -> None: ...
    def on_message(self, msg: Message) -> None: ...
    def emit(self, event: Event, **extra: object) -> None: ...
    def wanted(self) -> None: ...
    async def leave(self) -> None: ...
