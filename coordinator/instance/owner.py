"""What only the owner does: run the startup phases and tell the fleet about them.

The owner is the process that runs the startup sequence. It writes the instance hash
(``N:instance:<id>``) whole at every transition and heartbeat, publishes each transition
on ``N:events`` and the instance's own channel in the same transaction, re-publishes
everything when the Redis link comes back, folds its phase durations into
``N:phase_stats`` and removes its record on a clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from coordinator._redis.client import REDIS_ERRORS
from coordinator._redis.clock import ServerClock
from coordinator.contract.events import Drop, Message, encode_event
from coordinator.contract.phases import Event, State
from coordinator.contract.record import InstanceRecord, Link
from coordinator.contract.signing import sign_record
from coordinator.exceptions import PhaseError
from coordinator.fleet.registry import PhaseStats, remove_record, write_record
from coordinator.instance.status import Status

if TYPE_CHECKING:
    from coordinator.instance.interfaces import RoleHost

log = logging.getLogger("coordinator")
OUTBOX_SIZE = 256
LEAVE_FLUSH = 1.0  # seconds a clean stop waits for queued events to be published

# The state a republish announces, by the state the instance is in.
STATE_EVENT = {State.READY: Event.READY, State.FAILED: Event.FAILED,
               State.DRAINING: Event.DRAINING, State.STOPPED: Event.STOPPED}


class Owner:
    """The owner's side of a :class:`~coordinator.instance.coordinator.Coordinator`.

    Publishing never blocks a transition: events go through a bounded outbox to one
    publisher task, and while the link is down they are dropped, because the reconnect
    re-publishes the whole state.
    """

    def __init__(self, coord: RoleHost) -> None:
        self.coord = coord
        self.phase_durations: dict[str, float] = {}
        self._folded: set[str] = set()
        self.stats = PhaseStats(coord.redis, coord.keys)
        self.outbox: asyncio.Queue[Message] = asyncio.Queue(OUTBOX_SIZE)
        # heartbeat_at (and the index score) are on the Redis server's clock, learned from
        # the TIME every write reads: readers and scripts judge liveness on that clock.
        self.clock = ServerClock()

    def start(self) -> None:
        self.coord.tasks.spawn(self._publisher(), "publisher")
        self.coord.tasks.spawn(self._heartbeat_loop(), "heartbeat")

    # -- the startup sequence -------------------------------------------------------

    @contextlib.asynccontextmanager
    async def phase(self, name: str) -> AsyncIterator[None]:
        """Run one startup phase: time it, publish its start and completion.

        A phase that raises marks the instance ``failed`` (held connections are rejected
        at once) and the error propagates. Completing the ready phase releases the held
        handshakes before ``ready`` is published.
        """
        coord = self.coord
        index = coord.plan.index(name)
        if index is None:
            raise PhaseError(f"unknown phase {name!r}; phases are {coord.plan.phases}")
        if coord.state in (State.FAILED, State.DRAINING, State.STOPPED):
            raise PhaseError(f"cannot start phase {name!r} while {coord.state}")
        started = time.monotonic()
        state = State.READY if coord.is_ready else State.STARTING
        coord.set_status(Status(state, name, index, time.time(), coord.status.started_at))
        self.emit(Event.PHASE_STARTED)
        try:
            yield
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            coord.fail(f"phase {name} raised {type(exc).__name__}: {exc}", exc)
            raise
        duration = time.monotonic() - started
        self.phase_durations[name] = duration
        # Only a starting instance becomes ready: a drain (or stop) that began while the
        # ready phase ran must not be undone by its completion.
        becomes_ready = name == coord.plan.ready_phase and coord.state is State.STARTING
        if becomes_ready:
            # Release before publishing: the held handshakes are woken first and go out
            # before the publisher's turn (bench/release_latency.py: 0.9 -> 0.3 ms).
            coord.set_status(Status(State.READY, name, index, coord.status.phase_started_at,
                                     coord.status.started_at))
        self.emit(Event.PHASE_COMPLETED, duration=round(duration, 4))
        if becomes_ready:
            self.emit(Event.READY)
        if becomes_ready or index == coord.plan.total:
            self._fold_new_stats()

    # -- the record and the events --------------------------------------------------

    def record(self, link_up: bool = False) -> dict[str, str]:
        """The instance hash as written now (``link_up``: as it will be once the link
        that is coming up is marked up)."""
        coord = self.coord
        now = time.time()
        status = coord.status
        expected = coord.expected_ready_in(now)
        counts = coord.gate_counts(coord.redis_ok or link_up)
        fields = InstanceRecord(
            id=coord.id,
            state=status.state.value,
            phase=status.phase,
            phase_index=status.phase_index,
            phases_total=coord.plan.total,
            started_at=status.started_at,
            updated_at=coord.updated_at,
            heartbeat_at=self.clock.now(),
            phase_started_at=status.phase_started_at,
            ready_at=coord.ready_at,
            expected_ready_at=None if expected is None or coord.is_ready else now + expected,
            ttl=float(coord.settings.instance_ttl),
            queue_depth=counts.queue_depth,
            connections=counts.connections,
            queue_max=counts.queue_max,
            held_leases=counts.held_leases,
            fleet_cap_mode=counts.fleet_cap_mode,
            fleet_cap=counts.fleet_cap,
            admitted=counts.admitted,
            rejected=counts.rejected,
            redis=Link.OK if coord.redis_ok or link_up else Link.DOWN,
            host=coord.host,
            pid=os.getpid(),
            version=coord.version,
        ).encode()
        if coord.keyring is not None:
            fields["sig"] = sign_record(fields, coord.keyring)
        return fields

    def message(self, event: Event, **extra: object) -> Message:
        coord = self.coord
        return Message(coord.id, event.value, coord.status.phase,
                                coord.status.phase_index, time.time(),
                                {"state": coord.state.value,
                                 "started_at": coord.status.started_at,
                                 "phases_total": coord.plan.total, **extra})

    def emit(self, event: Event, **extra: object) -> None:
        try:
            self.outbox.put_nowait(self.message(event, **extra))
        except asyncio.QueueFull:
            self.coord.count_drop(Drop.OUTBOX_FULL)  # the next republish carries it

    async def _publisher(self) -> None:
        coord = self.coord
        while True:
            msg = await self.outbox.get()
            try:
                if coord.redis_ok:  # else dropped: the reconnect republishes the whole state
                    await self._publish(msg)
            except REDIS_ERRORS as exc:
                coord.link_lost(exc)
            finally:
                self.outbox.task_done()  # leave() waits for the queue to be published

    async def _publish(self, msg: Message | None, link_up: bool = False) -> None:
        coord = self.coord
        record = self.record(link_up)
        await write_record(coord.redis, coord.keys, record,
                           coord.settings.instance_ttl, float(record["heartbeat_at"]),
                           event=None if msg is None else encode_event(msg, coord.keyring),
                           clock=self.clock)

    async def _heartbeat_loop(self) -> None:
        coord = self.coord
        interval = coord.settings.heartbeat_interval
        next_at = time.monotonic()
        while True:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if next_at < time.monotonic():  # fell behind (a stall): don't burst to catch up
                next_at = time.monotonic()
            if not coord.redis_ok or coord.state is State.STOPPED:
                continue
            try:
                record = self.record()  # N:instances score = the hash's heartbeat_at
                await write_record(coord.redis, coord.keys, record,
                                   coord.settings.instance_ttl, float(record["heartbeat_at"]),
                                   clock=self.clock)
            except REDIS_ERRORS as exc:
                coord.link_lost(exc)

    def _fold_new_stats(self) -> None:
        """Teach the fleet this startup's durations: at ready (what the estimate of when
        an instance will be ready needs), then at the last phase (the rest), each once."""
        fresh = {p: d for p, d in self.phase_durations.items() if p not in self._folded}
        if fresh and self.coord.redis_ok:
            self._folded.update(fresh)
            self.coord.tasks.spawn(self._fold_stats(fresh), "fold-stats")

    async def _fold_stats(self, durations: dict[str, float]) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self.stats.fold(durations)

    # -- the link and the end -------------------------------------------------------

    async def on_link_up(self) -> None:
        """Re-publish the whole state: the record, and the event that carries it. The
        server's clock is read first: the record's heartbeat_at is on it (this may be
        another server than before, after a failover)."""
        await self.clock.sync(self.coord.redis)
        event = self.state_event()
        await self._publish(None if event is None else self.message(event), link_up=True)

    def after_link_up(self, published: Status) -> None:
        event = self.state_event()
        if self.coord.status != published and event is not None:
            # A transition during the round trip of on_link_up was dropped by the
            # publisher (the link was not up yet): publish where the instance is now.
            self.emit(event)

    def state_event(self) -> Event | None:
        """The event that says where the instance is; None before its first phase (the
        record alone says "starting": a ``phase_started`` without a phase would not)."""
        coord = self.coord
        if coord.state is State.STARTING and coord.status.phase is None:
            return None
        return STATE_EVENT.get(coord.state, Event.PHASE_STARTED)

    def on_message(self, msg: Message) -> None:
        """The owner's own events, echoed back on its channel: nothing to learn."""

    def wanted(self) -> None:
        """The owner knows its status first hand: no poll."""

    async def leave(self) -> None:
        """Let the publisher publish what is still queued (each write rewrites the record),
        then remove the record; stopped, the heartbeat writes nothing more, so no record
        outlives a clean stop."""
        coord = self.coord
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LEAVE_FLUSH):
                await self.outbox.join()
        await remove_record(coord.redis, coord.keys, coord.id, event=encode_event(
            self.message(Event.STOPPED), coord.keyring))
