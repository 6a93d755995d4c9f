"""What only a follower does: learn the instance's status from Redis.

A follower gates connections for an instance whose startup runs in another process (a
sidecar, another uvicorn worker). It learns the status from three sources, fastest
first: events on ``N:instance:<id>:events``, a read of the instance hash after every
(re)subscribe, and re-reads of the hash at 50 ms, 100 ms, ... 1 s while anyone waits
(pub/sub is at-most-once: a lost message delays a release by one interval at most).

What the app's handlers need in this process (its pools, its own objects) a follower
builds in phases of its own (``async with coord.phase(name)``), which publish nothing.
Once it has started one, it is ready only when the instance is and its own ready phase
has completed: a handshake is never handed to a process that has not built its part.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING

from coordinator._redis.client import REDIS_ERRORS
from coordinator._redis.clock import ServerClock
from coordinator.contract.events import Drop, Message
from coordinator.contract.phases import Event, State
from coordinator.contract.record import decode_record, is_live
from coordinator.contract.signing import record_signature_ok
from coordinator.exceptions import InvalidMessage, PhaseError
from coordinator.fleet import registry
from coordinator.instance.status import (
    Status,
    advance,
    progressive_intervals,
    status_from_message,
    status_from_record,
)

if TYPE_CHECKING:
    from coordinator.instance.interfaces import RoleHost

log = logging.getLogger("coordinator")


class Follower:
    """The follower's side of a :class:`~coordinator.instance.coordinator.Coordinator`.

    With a signing key it trusts only what the owner signed, for this instance (the
    record's signed ``id``, the message's ``instance``) in this namespace, and lets no
    evidence stamped before it started following (a message's ``ts``, a record's
    ``heartbeat_at``) take it out of ``starting``: a signed ``ready`` captured from a
    previous life and replayed within the 30 s a message stays fresh cannot release
    anyone. Such older evidence still moves it within ``starting`` (the phase it shows),
    and the owner's next heartbeat (``COORD_HEARTBEAT_INTERVAL``) brings fresh evidence,
    so a follower that starts beside a ready owner admits within about that interval.

    "Before it started following" is judged on the clock each stamp is on, so that no
    step of a clock blocks a follower: a record's ``heartbeat_at`` is on the Redis
    server's clock, which the follower learns from the ``TIME`` it reads with every
    record; a message's ``ts`` is on the owner's wall clock, which is the follower's
    (they share a host: a sidecar, uvicorn workers), and the instance it started is
    taken on that clock as it reads now, so a step back of the host's clock moves it
    back too (the monotonic clock measures the time since).
    """

    def __init__(self, coord: RoleHost) -> None:
        self.coord = coord
        self._poll: asyncio.Task[None] | None = None
        self.clock = ServerClock()  # the Redis server's, learned from every record read
        self.joined = time.monotonic()  # when it started following (monotonic clock)
        self.local = False  # this process runs phases of its own
        self.local_ready = False  # and its ready phase has completed
        self._held_back: Status | None = None  # the instance's ready, until local_ready

    @contextlib.asynccontextmanager
    async def phase(self, name: str) -> AsyncIterator[None]:
        """Run one of this process's own phases: logged, not published. One that raises
        fails this process (held handshakes rejected); completing the ready phase lets
        the instance's ready admit here."""
        coord = self.coord
        if coord.plan.index(name) is None:
            raise PhaseError(f"unknown phase {name!r}; phases are {coord.plan.phases}")
        if coord.state in (State.FAILED, State.DRAINING, State.STOPPED):
            raise PhaseError(f"cannot start phase {name!r} while {coord.state}")
        self.local = True
        started = time.monotonic()
        try:
            yield
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            coord.fail(f"local phase {name} raised {type(exc).__name__}: {exc}", exc)
            raise
        log.info("instance %s: local phase %s done in %.3fs", coord.id, name,
                 time.monotonic() - started)
        if name == coord.plan.ready_phase:
            self.local_ready = True
            held, self._held_back = self._held_back, None
            if held is not None and coord.state is State.STARTING:
                coord.set_status(held)
                self.wanted()  # the watch for a lost draining or failed
    def start(self) -> None:
        """Nothing runs until someone waits (see :meth:`wanted`)."""
        self.joined = time.monotonic()

    def joined_wall(self) -> float:
        """When it started following, on the host's wall clock as it reads now."""
        return time.time() - (time.monotonic() - self.joined)

    def joined_server(self) -> float:
        """When it started following, on the Redis server's clock (late by the estimate's
        uncertainty, never early); on the wall clock until the server's is known."""
        if not self.clock.synced:
            return self.joined_wall()
        return self.clock.at(self.joined) + self.clock.uncertainty()

    async def on_link_up(self) -> None:
        coord = self.coord
        self.follow_record(await registry.read_record(coord.redis, coord.keys, coord.id,
                                                      clock=self.clock))

    def after_link_up(self, published: Status) -> None:
        """A follower publishes nothing."""

    def on_message(self, msg: Message) -> None:
        self._follow(status_from_message(msg, self.coord.plan), msg.ts >= self.joined_wall())

    def emit(self, event: Event, **extra: object) -> None:
        """A follower publishes nothing: the owner speaks for the instance."""

    async def leave(self) -> None:
        """The record is the owner's to remove."""

    def wanted(self) -> None:
        """Someone started waiting (or the instance became ready here): make sure the
        safety-net poll runs."""
        if self._poll is None or self._poll.done():
            self._poll = self.coord.tasks.spawn(self._poll_loop(), "poll")

    async def _poll_loop(self) -> None:
        """Re-read the hash at 50 ms, 100 ms, ... 1 s while anyone waits for ready; then,
        while ready, once a heartbeat interval, so that a lost ``draining`` or ``failed``
        is seen within one (a ready follower once never read the hash again)."""
        coord = self.coord
        waiting = progressive_intervals()
        while True:
            if coord.state is State.STARTING and coord.anyone_waiting:
                interval = next(waiting)
            elif coord.state is State.READY:
                interval, waiting = coord.settings.heartbeat_interval, progressive_intervals()
            else:
                return
            await asyncio.sleep(interval)
            try:
                raw = await registry.read_record(coord.redis, coord.keys, coord.id,
                                                 clock=self.clock)
            except REDIS_ERRORS as exc:
                coord.link_lost(exc)
                continue
            self.follow_record(raw)

    def follow_record(self, raw: dict[str, str]) -> None:
        """Follow the instance hash, unless it is another instance's or (with a key) its
        ``sig`` does not cover it: then count it and ignore it."""
        if not raw:
            return
        coord = self.coord
        if not record_signature_ok(raw, coord.keyring):
            coord.dropped(InvalidMessage(Drop.BAD_RECORD_SIGNATURE), coord.keys.instance(coord.id))
            return
        if raw.get("id") != coord.id:  # signed, but copied from another instance's hash
            coord.dropped(InvalidMessage(Drop.WRONG_INSTANCE, "in the record"),
                          coord.keys.instance(coord.id))
            return
        record = decode_record(raw)
        if not is_live(record, self.clock.now()):  # both on the server's clock
            return  # left by an instance that died: its successor has not written yet
        beat = record.get("heartbeat_at")
        self._follow(status_from_record(record),
                     isinstance(beat, float) and beat >= self.joined_server())

    def _follow(self, incoming: Status | None, fresh: bool) -> None:
        """``fresh``: the evidence was stamped after this process started following."""
        if incoming is None:
            return
        current = self.coord.status
        trusted = self.coord.keyring is None or fresh
        new = advance(current, incoming, trusted=trusted)
        if new.state is State.READY and self.local and not self.local_ready:
            # The instance is ready, this process not yet: starting here until it is.
            self._held_back = new
            new = replace(new, state=State.STARTING)
        if new != current:
            self.coord.set_status(new)
            if new.state is State.READY:
                self.wanted()  # the watch for a lost draining or failed
