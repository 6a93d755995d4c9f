"""The coordinator of one instance: its status, its Redis link, its hold queue.

An *owner* runs the startup sequence (``async with coord.phase(name)``), writes the
instance hash, heartbeats it and publishes every transition. A *follower* gates
connections for an instance whose startup runs in another process and learns its status
over pub/sub, backed by re-reading the hash. Both keep working with Redis down: the
status lives in memory and Redis only mirrors it.

Every background task is created by :meth:`Coordinator.start`, held in ``_tasks`` and
cancelled and awaited by :meth:`Coordinator.stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import redis.asyncio as redis

from . import messages, registry
from .connections import REDIS_ERRORS, make_redis, reconnect_delay
from .exceptions import InvalidMessage
from .keys import Keys
from .leases import FleetLeases
from .phases import Event, PhasePlan, State
from .queue import HoldQueue
from .readiness import Status, advance, progressive_intervals, status_from_message, \
    status_from_record
from .settings import Settings

log = logging.getLogger("coordinator")
OUTBOX_SIZE = 256
START_LINK_WAIT = 1.0
STOP_CANCEL_ROUNDS = 10  # stop() cancels its tasks at most this many times, 0.5 s apart

Closer = Callable[[int, str], Awaitable[None]]


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("ws-coordinator")
    except Exception:  # pragma: no cover - running from a source tree
        return "0.0.0"


class Coordinator:
    def __init__(self, settings: Settings, *, role: str = "owner",
                 client: redis.Redis | None = None) -> None:
        if role not in ("owner", "follower"):
            raise ValueError("role must be 'owner' or 'follower'")
        self.settings = settings
        self.role = role
        self.id = settings.instance_id
        self.keys = Keys(settings.namespace)
        self.plan = PhasePlan(settings.phases, settings.ready_phase, settings.near_ready_phases)
        self.redis = client if client is not None else make_redis(
            settings.redis_url, health_check_interval=settings.heartbeat_interval * 2)
        self._owns_client = client is None
        self.version = _version()
        self.host = socket.gethostname()

        now = time.time()
        self.status = Status(started_at=now if role == "owner" else None)
        self.updated_at = now
        self.ready_at: float | None = None
        self.phase_durations: dict[str, float] = {}
        self.phase_stats: dict[str, float] = {}

        self.queue = HoldQueue(settings.max_queue)
        self.leases = FleetLeases(self.redis, self.keys.leases, self.id, settings.fleet_max_queue,
                                  link_up=lambda: self.redis_ok)
        self.admitted: Counter[str] = Counter()  # "immediate", "after_hold"
        self.rejected: Counter[str] = Counter()  # by reason
        self.drops = messages.DropCounter()
        self.redis_ok = False
        self.redis_errors = 0
        self.connections: dict[int, Closer] = {}  # open WebSocket connections, by gate id
        self.listeners: list[Callable[[str, Coordinator], None]] = []

        self._ready_waiters: set[asyncio.Future[State]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._outbox: asyncio.Queue[messages.Message] = asyncio.Queue(OUTBOX_SIZE)
        self._link_attempted = asyncio.Event()
        self._poll_task: asyncio.Task[None] | None = None
        self._started = False
        self._stopped = False

    # -- the status, as the gate reads it (no I/O) ----------------------------------

    @property
    def state(self) -> State:
        return self.status.state

    @property
    def current_phase(self) -> str | None:
        return self.status.phase

    @property
    def is_ready(self) -> bool:
        return self.status.state is State.READY

    def expected_ready_in(self, now: float | None = None) -> float | None:
        """Seconds until the ready phase should complete, from the fleet's statistics."""
        if self.state is State.READY:
            return 0.0
        phase = self.status.phase
        if phase is None or self.plan.index(phase) is None or not self.phase_stats:
            return None
        remaining = self.plan.remaining_until_ready(phase)
        if not remaining or any(p not in self.phase_stats for p in remaining):
            return None
        now = time.time() if now is None else now
        elapsed = now - (self.status.phase_started_at or now)
        return max(0.0, sum(self.phase_stats[p] for p in remaining) - elapsed)

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the Redis link (and, for an owner, heartbeat and publisher).

        Waits at most ``START_LINK_WAIT`` for the first connection attempt, so that with
        Redis up the first events are published, and with Redis down start-up goes on.
        """
        if self._started:
            return
        self._started = True
        self._spawn(self._link_loop(), "link")
        if self.role == "owner":
            self._spawn(self._publisher(), "publisher")
            self._spawn(self._heartbeat_loop(), "heartbeat")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._link_attempted.wait(), START_LINK_WAIT)

    async def stop(self) -> None:
        """Reject whatever is held, leave the fleet view, cancel every task, close."""
        if self._stopped:
            return
        self._stopped = True
        self._set_status(Status(State.STOPPED, self.status.phase, self.status.phase_index,
                                time.time(), self.status.started_at))
        await self.leases.close()
        if self.role == "owner" and self.redis_ok:
            with contextlib.suppress(*REDIS_ERRORS):
                await asyncio.wait_for(self._leave_fleet(), 2.0)
        # On Python 3.11 a cancellation can be swallowed: asyncio.wait_for (redis-py wraps
        # every socket write in it) returns the result when the inner call finished in the
        # same step, and the loop goes on to its next await. So cancel again, boundedly.
        pending = set(self._tasks)
        for _ in range(STOP_CANCEL_ROUNDS):
            if not pending:
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        if pending:
            log.error("coordinator tasks still running after stop: %s",
                      ", ".join(sorted(t.get_name() for t in pending)))
        self._tasks.clear()
        if self._owns_client:
            with contextlib.suppress(*REDIS_ERRORS):
                await self.redis.aclose()

    async def __aenter__(self) -> Coordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the startup sequence (owner) -----------------------------------------------

    @contextlib.asynccontextmanager
    async def phase(self, name: str) -> AsyncIterator[None]:
        """Run one startup phase: time it, publish its start and completion.

        A phase that raises marks the instance ``failed`` (held connections are rejected
        at once) and the error propagates.
        """
        index = self.plan.index(name)
        if index is None:
            raise ValueError(f"unknown phase {name!r}; phases are {self.plan.phases}")
        if self.role != "owner":
            raise RuntimeError("only the owner runs phases")
        if self.state in (State.FAILED, State.DRAINING, State.STOPPED):
            raise RuntimeError(f"cannot start phase {name!r} while {self.state.value}")
        started = time.monotonic()
        now = time.time()
        state = State.READY if self.is_ready else State.STARTING
        self._set_status(Status(state, name, index, now, self.status.started_at))
        self._emit(Event.PHASE_STARTED)
        try:
            yield
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.fail(f"phase {name} raised {type(exc).__name__}: {exc}")
            raise
        duration = time.monotonic() - started
        self.phase_durations[name] = duration
        # Only a starting instance becomes ready: a drain (or stop) that began while the
        # ready phase ran must not be undone by its completion.
        becomes_ready = name == self.plan.ready_phase and self.state is State.STARTING
        if becomes_ready:
            # Release before publishing: the held handshakes are woken first and go out
            # before the publisher's turn (bench/release_latency.py: 0.9 -> 0.3 ms).
            self.ready_at = time.time()
            self._set_status(Status(State.READY, name, index, self.status.phase_started_at,
                                    self.status.started_at))
        self._emit(Event.PHASE_COMPLETED, duration=round(duration, 4))
        if becomes_ready:
            self._emit(Event.READY)
        if index == self.plan.total and self.redis_ok:
            self._spawn(self._fold_stats(dict(self.phase_durations)), "fold-stats")

    def fail(self, why: str) -> None:
        if self.state in (State.DRAINING, State.STOPPED):
            log.warning("instance %s: %s (while %s; ignored)", self.id, why, self.state.value)
            return
        log.error("instance %s failed: %s", self.id, why)
        self._set_status(Status(State.FAILED, self.status.phase, self.status.phase_index,
                                time.time(), self.status.started_at))
        self._emit(Event.FAILED, error=why[:200])

    def begin_drain(self) -> None:
        """Reject held and new handshakes from now on; publish ``draining`` at once."""
        if self.state in (State.DRAINING, State.STOPPED):
            return
        self._set_status(Status(State.DRAINING, self.status.phase, self.status.phase_index,
                                time.time(), self.status.started_at))
        if self.role == "owner":
            self._emit(Event.DRAINING)

    async def close_connections(self, code: int = 1012, reason: str = "draining",
                                timeout: float = 1.0) -> int:
        """Close every open gated connection (1012 by default: service restart).

        Bounded: a client that stopped reading can block its close frame for as long as
        the server's keepalive allows, so whatever has not closed within ``timeout`` is
        abandoned (the server's own shutdown drops it) and the drain goes on.
        """
        closers = list(self.connections.values())
        self.connections.clear()
        if not closers:
            return 0
        tasks = [asyncio.ensure_future(c(code, reason)) for c in closers]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return sum(1 for t in done if not t.cancelled() and t.exception() is None)

    async def drain(self, grace: float | None = None) -> None:
        """SIGTERM: publish draining, keep rejecting for the grace, close, leave."""
        self.begin_drain()
        grace = self.settings.drain_grace if grace is None else grace
        if grace > 0:
            await asyncio.sleep(grace)
        await self.close_connections()
        await self.stop()

    # -- waiting for ready ----------------------------------------------------------

    async def wait_ready(self, timeout: float) -> bool:
        """True once the instance is ready; False on timeout, failure or drain."""
        if self.is_ready:
            return True
        if self.state is not State.STARTING:
            return False
        future: asyncio.Future[State] = asyncio.get_running_loop().create_future()
        self._ready_waiters.add(future)
        self.waiting_changed()
        try:
            return await asyncio.wait_for(future, timeout) is State.READY
        except asyncio.TimeoutError:
            return False
        finally:
            self._ready_waiters.discard(future)

    def waiting_changed(self) -> None:
        """Someone started waiting: a follower makes sure its safety-net poll runs."""
        if (self.role == "follower" and self._started and not self._stopped
                and self.state is State.STARTING
                and (self._poll_task is None or self._poll_task.done())):
            self._poll_task = self._spawn(self._poll_loop(), "poll")

    # -- status changes -------------------------------------------------------------

    def _set_status(self, status: Status) -> None:
        previous = self.status.state
        self.status = status
        self.updated_at = time.time()
        if status.state is previous:
            return
        if status.state is State.READY:
            released = self.queue.release_all()
            if released:
                log.info("instance %s ready: releasing %d held connection(s)", self.id,
                         released)
        elif status.state is not State.STARTING:
            reason = "failed" if status.state is State.FAILED else "draining"
            self.queue.reject_all(reason)
        if status.state is not State.STARTING:
            for waiter in self._ready_waiters:
                if not waiter.done():
                    waiter.set_result(status.state)
        self._tell("state")

    def _tell(self, what: str) -> None:
        """Notify listeners (metrics, dashboards); one that raises is logged, not fatal."""
        for listener in self.listeners:
            try:
                listener(what, self)
            except Exception:
                log.exception("coordinator listener %r failed on %s", listener, what)

    def _follow(self, incoming: Status | None) -> None:
        if incoming is None:
            return
        new = advance(self.status, incoming)
        if new != self.status:
            self._set_status(new)

    # -- the record and the events (owner) ------------------------------------------

    def record(self, link_up: bool = False) -> dict[str, str]:
        now = time.time()
        status = self.status
        expected = self.expected_ready_in(now)
        fields = registry.encode_record({
            "id": self.id,
            "state": status.state.value,
            "phase": status.phase,
            "phase_index": status.phase_index,
            "phases_total": self.plan.total,
            "started_at": status.started_at,
            "updated_at": self.updated_at,
            "heartbeat_at": now,
            "phase_started_at": status.phase_started_at,
            "ready_at": self.ready_at,
            "expected_ready_at": None if expected is None or self.is_ready else now + expected,
            "ttl": float(self.settings.instance_ttl),
            "queue_depth": len(self.queue),
            "queue_max": self.queue.max_size,
            "held_leases": len(self.leases.held),
            "fleet_cap_mode": self.leases.mode_with(self.redis_ok or link_up),
            "fleet_cap": self.settings.fleet_max_queue,
            "admitted": sum(self.admitted.values()),
            "rejected": sum(self.rejected.values()),
            "redis": "ok" if self.redis_ok or link_up else "down",
            "host": self.host,
            "pid": os.getpid(),
            "version": self.version,
        })
        if self.settings.signing_key:
            fields["sig"] = messages.sign_record(fields, self.settings.signing_key)
        return fields

    def _message(self, event: Event, **extra: Any) -> messages.Message:
        return messages.Message(self.id, event.value, self.status.phase,
                                self.status.phase_index, time.time(),
                                {"state": self.state.value, "started_at": self.status.started_at,
                                 "phases_total": self.plan.total, **extra})

    def _emit(self, event: Event, **extra: Any) -> None:
        if self.role != "owner":
            return
        msg = self._message(event, **extra)
        try:
            self._outbox.put_nowait(msg)
        except asyncio.QueueFull:
            self.drops.counts["outbox_full"] += 1  # the next republish carries the state

    async def _publisher(self) -> None:
        while True:
            msg = await self._outbox.get()
            if not self.redis_ok:
                continue  # dropped: the reconnect republishes the whole state
            try:
                await self._publish(msg)
            except REDIS_ERRORS as exc:
                self._link_lost(exc)

    async def _publish(self, msg: messages.Message, link_up: bool = False) -> None:
        record = self.record(link_up)
        await registry.write_record(self.redis, self.keys, record, self.settings.instance_ttl,
                                    float(record["heartbeat_at"]),
                                    event=messages.encode(msg, self.settings.signing_key))

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval
        next_at = time.monotonic()
        while True:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if next_at < time.monotonic():  # fell behind (a stall): don't burst to catch up
                next_at = time.monotonic()
            if not self.redis_ok:
                continue
            try:
                record = self.record()  # N:instances score = the hash's heartbeat_at
                await registry.write_record(self.redis, self.keys, record,
                                            self.settings.instance_ttl,
                                            float(record["heartbeat_at"]))
            except REDIS_ERRORS as exc:
                self._link_lost(exc)

    async def _fold_stats(self, durations: dict[str, float]) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await registry.fold_phase_stats(self.redis, self.keys, durations)

    async def _leave_fleet(self) -> None:
        await registry.remove_record(self.redis, self.keys, self.id, event=messages.encode(
            self._message(Event.STOPPED), self.settings.signing_key))

    # -- the Redis link -------------------------------------------------------------

    async def _link_loop(self) -> None:
        """Subscribe, then read state; on any Redis error reconnect with backoff."""
        channel = self.keys.instance_events(self.id)
        attempt = 0
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                await self._on_link_up()
                attempt = 0
                while self.redis_ok:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None:
                        self._on_message(channel, msg.get("data"))
            except REDIS_ERRORS as exc:
                self._link_lost(exc)
            except Exception as exc:  # bad data in Redis must not end the link for good
                log.exception("redis link: unexpected error; reconnecting")
                self._link_lost(exc)
            finally:
                self._link_attempted.set()
                with contextlib.suppress(*REDIS_ERRORS):
                    await asyncio.shield(pubsub.aclose())
            attempt += 1
            await asyncio.sleep(reconnect_delay(attempt))

    async def _on_link_up(self) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            self.phase_stats = await registry.read_phase_stats(self.redis, self.keys)
        published = self.status
        if self.role == "owner":
            # Re-publish the whole state: the record, and the event that carries it.
            await self._publish(self._message(self._state_event()), link_up=True)
        else:
            self._follow_record(await registry.read_record(self.redis, self.keys, self.id))
        if not self.redis_ok:
            log.info("redis link up (%s)", self.settings.redis_url_redacted)
        self.redis_ok = True
        self.leases.flush()  # releases queued while the link was down
        if self.role == "owner" and self.status != published:
            # A transition during the round trip above was dropped by the publisher (the
            # link was not up yet): publish where the instance is now.
            self._emit(self._state_event())
        self._link_attempted.set()
        self._tell("redis")

    def _state_event(self) -> Event:
        return {State.READY: Event.READY, State.FAILED: Event.FAILED,
                State.DRAINING: Event.DRAINING, State.STOPPED: Event.STOPPED
                }.get(self.state, Event.PHASE_STARTED)

    def _link_lost(self, exc: BaseException) -> None:
        self.redis_errors += 1
        if not self.redis_ok and self.redis_errors == 1:
            log.warning("redis unavailable (%s): %s; gating on local state, retrying in the "
                        "background", self.settings.redis_url_redacted, type(exc).__name__)
        if self.redis_ok:
            log.warning("redis link lost (%s): %s; gating on local state until it returns",
                        self.settings.redis_url_redacted, type(exc).__name__)
            self.redis_ok = False
            self._tell("redis")

    def _on_message(self, channel: str, data: Any) -> None:
        try:
            msg = messages.decode(data if isinstance(data, (bytes, str)) else b"",
                                  signing_key=self.settings.signing_key,
                                  expected_instance=self.id)
        except InvalidMessage as exc:
            self.drops.drop(exc, channel)
            self._tell("drop")
            return
        if self.role == "follower":
            self._follow(status_from_message(msg, self.plan))

    async def _poll_loop(self) -> None:
        """The safety net: re-read the hash at 50 ms, 100 ms, ... 1 s while anyone waits."""
        for interval in progressive_intervals():
            await asyncio.sleep(interval)
            if self.state is not State.STARTING or not (len(self.queue) or self._ready_waiters):
                return
            try:
                raw = await registry.read_record(self.redis, self.keys, self.id)
            except REDIS_ERRORS as exc:
                self._link_lost(exc)
                continue
            self._follow_record(raw)

    def _follow_record(self, raw: dict[str, str]) -> None:
        """Follow the instance hash, unless its ``sig`` fails: then count it and ignore it."""
        if not raw:
            return
        if not messages.record_signature_ok(raw, self.settings.signing_key):
            self.drops.drop(InvalidMessage("bad_record_signature"), self.keys.instance(self.id))
            return
        record = registry.decode_record(raw)
        if not registry.is_live(record, time.time()):
            return  # left by an instance that died: its successor has not written yet
        self._follow(status_from_record(record))

    # -- tasks ------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"coordinator-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("coordinator task %s died", task.get_name(), exc_info=task.exception())
