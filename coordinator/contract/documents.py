"""The JSON documents operators read: the fleet document (``/fleet``, ``coordinator
fleet --json``, the dashboard's feed) and the health document (``/health/*``).

Written once, as types: the fleet view and the health routes build them, the CLI's
table, the dashboard and the tests read them. An instance of the fleet document is the
instance record as read (:class:`~coordinator.contract.record.RecordView`) plus what the
reader derives from it.
"""

from __future__ import annotations

from typing import TypedDict

from coordinator.contract.record import RecordView


class InstanceView(RecordView, total=False):
    """One live instance in the fleet document: its record's fields (``sig`` left out),
    ``held_leases`` counted from ``N:leases``, and ages against the reader's clock."""

    heartbeat_age: float  # seconds since its last heartbeat
    time_in_phase: float | None
    expected_ready_in: float | None  # seconds, while starting and estimated


class FleetTotals(TypedDict):
    """Over every live instance read."""

    instances: int
    by_state: dict[str, int]  # every State, zeros included, then any other state seen
    ready: int
    ready_ratio: float
    held: int  # handshakes held now
    connections: int
    queue_max: int  # the local caps, summed
    leases: int  # unexpired leases, including those of instances already gone
    fleet_cap: int | None  # the smallest any live instance enforces
    admitted: int
    rejected: int


class FleetDocument(TypedDict):
    namespace: str
    generated_at: float  # the reader's clock
    instances: list[InstanceView]  # sorted by id
    totals: FleetTotals
    index_size: int  # members of N:instances
    truncated: bool  # more members (or leases) than one snapshot reads


class QueueStatus(TypedDict):
    """The hold queue, as the health document shows it."""

    depth: int  # handshakes held now
    max: int  # COORD_MAX_QUEUE
    oldest_wait: float  # seconds the oldest held one has waited
    held_total: int  # ever held (a slot and, with a fleet cap, a lease)
    released_total: int  # ever released to the app


class CapStatus(TypedDict, total=False):
    cap: int | None
    mode: str  # a CapMode value
    held_leases: int
    refused: str  # why Redis refused the leases (NOPERM), when it did


class HealthDocument(TypedDict, total=False):
    """What ``/health/startup`` and ``/health/ready`` answer (``/health/live``: only
    ``status`` and ``instance``). The gate's parts are there with a gate."""

    instance: str
    state: str
    phase: str | None
    phase_index: int | None
    phases_total: int
    redis: str  # a Link value: ok, down
    dropped_messages: dict[str, int]
    queue: QueueStatus
    fleet_cap: CapStatus
    admitted: dict[str, int]  # by how: immediate, after_hold
    rejected: dict[str, int]  # by Reason
    drain: DrainStatus  # whether SIGTERM drains this instance in this process


class DrainStatus(TypedDict):
    armed: bool  # False: a SIGTERM reaches the server's own shutdown, held handshakes get 500
    via: str | None  # how the server's SIGTERM handler was taken over
