"""The gate: a pure ASGI middleware that holds WebSocket handshakes until ready.

Every scope but ``websocket`` passes through untouched, except an engine.io open on the
Socket.IO path (gate/engineio.py), which is gated like a handshake; the other requests
of a Socket.IO session pass through whatever the instance's state. On a ready instance a
WebSocket passes through too, after one attribute read and no Redis call. Otherwise the gate
applies the admission table (gate/admission.py): it holds the handshake without accepting
it, releases it first in, first out once the instance is ready, or rejects it with a
retry hint. Close code 1011 is never its answer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from coordinator._asgi import ASGIApp, Message, Receive, Scope, Send
from coordinator._tasks import TaskSet
from coordinator.contract.documents import QueueStatus
from coordinator.contract.outcomes import Admitted, Seen
from coordinator.contract.phases import State
from coordinator.contract.record import CapMode
from coordinator.contract.rejection import Reason, reason_payload
from coordinator.fleet.leases import REFUSED, SKEW, FleetLeases, LeaseOutcome
from coordinator.gate import engineio
from coordinator.gate.admission import (
    HOLD,
    REJECT,
    Decision,
    decide,
    reason_for,
    rejection,
    spread,
)
from coordinator.gate.connections import OpenConnections, SessionCloser
from coordinator.gate.holds import ADMIT, Hold, HoldEnd, HoldQueue
from coordinator.gate.lifespan import Lifecycle, Startup, run_lifespan
from coordinator.gate.pacing import Pacer
from coordinator.gate.rejection import reject
from coordinator.instance.coordinator import Coordinator
from coordinator.instance.interfaces import GateCounts

Observer = Callable[[Seen, Reason | None, float], None]
# The app's sessions a drain ends, paced with the gate's own connections: each call lists
# one closer per session open now (coordinator.socketio.SocketIOSessions).
Sessions = Callable[[], Iterable[SessionCloser]]


log = logging.getLogger("coordinator.gate")


GAVE_UP = Reason.GAVE_UP


@dataclass
class GateState:
    """Everything one gate holds, in one place (uvicorn's ``ServerState`` habit).

    ``queue``: the held handshakes. ``leases``: this process's fleet leases (with
    ``COORD_FLEET_MAX_QUEUE``). ``admitted`` counts handshakes handed to the app by how
    (``immediate``, ``after_hold``), ``rejected`` by :class:`Reason`. ``connections``: the
    open connections a drain closes, by connection id.
    """

    queue: HoldQueue
    leases: FleetLeases
    connections: OpenConnections
    admitted: Counter[Admitted] = field(default_factory=Counter)
    rejected: Counter[Reason] = field(default_factory=Counter)
    held_by_client: Counter[str] = field(default_factory=Counter)  # client address -> holds


@dataclass(frozen=True)
class GateFigures:
    """One gate's figures at one moment: what the instance record (:meth:`counts`), the
    health document and the metrics all show, read in one place."""

    queue: QueueStatus  # HoldQueue.status()
    held: int
    queue_max: int
    oldest_wait: float
    connections: int  # open: handed to the app and not yet closed
    admitted: dict[Admitted, int]  # every Admitted, zeros included
    rejected: dict[Reason, int]
    leases_held: int
    fleet_cap: int | None
    cap_mode: CapMode
    lease_outcomes: dict[LeaseOutcome, int]
    lease_errors: int
    lease_denied: int  # acquires Redis refused for want of a permission (NOPERM)
    lease_denial: str | None  # the latest such refusal, until an acquire succeeds
    paced: int  # held for a token of slow start or the fleet admission rate
    admit_errors: int  # the fleet admission rate's failed Redis calls


class ConnectionGate:
    """Holds a WebSocket handshake until its instance is ready; rejects it cleanly when
    holding cannot help.

    ``app`` is the ASGI application behind the gate; ``coordinator`` says where the
    instance's startup is. The gate attaches itself to the coordinator, which then tells
    it of every state change before anyone else: held handshakes are released (or
    rejected) before ``ready`` (or ``failed``, ``draining``) is published, so no client
    learns of the change before its own handshake is answered. The race it closes: a
    handshake that reaches a handler whose dependencies do not exist yet, and dies with
    close code 1011.

    ``observers`` are called as ``observer(what, reason, waited)`` for each handshake's
    end (``held``, ``released``, ``rejected``, ``gave_up``): the hold-time histogram
    (``Metrics.observe``).

    ``socketio_path`` (default ``/socket.io``, python-socketio's; None: off) is where the
    app serves Socket.IO: an engine.io open there (an HTTP ``GET`` or a WebSocket without
    a ``sid``) is held, admitted or rejected as a handshake is (a rejected polling open
    gets HTTP 503 + Retry-After), and every request that carries a ``sid`` passes through
    untouched. ``sessions`` lists the sessions a drain ends besides the gate's own
    connections (``SocketIOSessions(sio)``), paced with them over the drain's spread.

    Wrap an ASGI app (``app = ConnectionGate(api, coord)``) or add it to a Starlette or
    FastAPI app as middleware (``api.add_middleware(ConnectionGate, coordinator=coord)``),
    which keeps ``api`` a FastAPI app for ``fastapi run``. Either way it sees the app's
    lifespan, and from its start SIGTERM drains the instance (drain.py).

    ``startup`` is for an app with no lifespan of its own (Django Channels, Django): the
    gate then runs the instance's lifecycle itself (lifespan.Lifecycle). It starts the
    coordinator, runs ``await startup()`` as a task (the phases) and arms the drain at
    the server's lifespan startup, which the app behind then never sees, or, under a
    server that sends no lifespan (daphne), at the first scope it is called with; at the
    lifespan's shutdown (or the drain's end) it stops them.
    """

    def __init__(self, app: ASGIApp, coordinator: Coordinator,
                 observers: list[Observer] | None = None, *,
                 socketio_path: str | None = engineio.DEFAULT_PATH,
                 sessions: Sessions | None = None, startup: Startup | None = None) -> None:
        self.app = app
        self.lifecycle = Lifecycle(coordinator, startup) if startup is not None else None
        self.coord = coordinator
        self.socketio_prefix = engineio.prefix(socketio_path)
        self.sessions = sessions
        settings = coordinator.settings
        self.tasks = TaskSet("gate", log)
        self.state = GateState(
            HoldQueue(settings.max_queue),
            FleetLeases(coordinator.redis, coordinator.keys.leases, coordinator.id,
                        settings.fleet_max_queue, link_up=lambda: coordinator.redis_ok,
                        max_hold=settings.max_queue_time, index=coordinator.keys.instances,
                        liveness=settings.instance_ttl + SKEW),
            OpenConnections(tasks=self.tasks, close_reason=self._close_reason,
                            max_age=settings.max_connection_age, on_expire=self._expired))
        self.observers: list[Observer] = []
        for observer in [*coordinator.gate_observers, *(observers or ())]:
            self.observe(observer)  # once each: Metrics(coord) and observers=[...] alike
        self.pacer = Pacer(settings, self.state.queue, coordinator.redis,
                           (coordinator.keys.admit, coordinator.keys.instances),
                           link_up=lambda: coordinator.redis_ok, tasks=self.tasks)
        self._pacing = self.pacer.enabled  # read once: the fast path checks a plain bool
        coordinator.attach(self)

    # -- what the coordinator asks of its gate --------------------------------------

    def on_state(self, state: State) -> None:
        queue = self.state.queue
        if state is State.READY and self._pacing:
            log.info("instance %s ready: admitting %d held connection(s) at the paced rate",
                     self.coord.id, len(queue))
            self.pacer.ready()
        elif state is State.READY:
            released = queue.release_all()
            if released:
                log.info("instance %s ready: releasing %d held connection(s)", self.coord.id,
                         released)
        elif state is not State.STARTING:
            queue.reject_all(Reason.FAILED if state is State.FAILED else Reason.DRAINING)

    def on_link_up(self) -> None:
        self.state.leases.on_link_up()  # releases queued while the link was down

    def observe(self, observer: Observer) -> None:
        if observer not in self.observers:
            self.observers.append(observer)

    def figures(self) -> GateFigures:
        state, queue, leases = self.state, self.state.queue, self.state.leases
        return GateFigures(
            queue=queue.status(), held=len(queue), queue_max=queue.max_size,
            oldest_wait=queue.oldest_wait(), connections=len(state.connections),
            admitted={**dict.fromkeys(Admitted, 0), **state.admitted},
            rejected=dict(state.rejected), leases_held=len(leases.held), fleet_cap=leases.cap,
            cap_mode=leases.mode, lease_outcomes=dict(leases.outcomes),
            lease_errors=leases.errors, lease_denied=leases.denied,
            lease_denial=leases.denial, paced=self.pacer.paced,
            admit_errors=self.pacer.fleet_errors)

    def counts(self, link_up: bool) -> GateCounts:
        """The record's figures; ``link_up``: as they will be once the link that is coming
        up is marked up (the fleet cap's mode)."""
        figures = self.figures()
        return GateCounts(figures.held, figures.queue_max, figures.leases_held,
                          figures.fleet_cap, self.state.leases.mode_with(link_up),
                          sum(figures.admitted.values()), sum(figures.rejected.values()),
                          figures.connections)

    async def aclose(self) -> None:
        await self.tasks.cancel()
        await self.state.leases.close()

    async def close_connections(self, *, timeout: float = 1.0, spread: float = 0.0) -> int:
        """Close every open gated connection with 1012, then end the app's ``sessions``,
        ``spread`` over that many seconds (:meth:`OpenConnections.close_all`)."""
        sessions: list[SessionCloser] = []
        if self.sessions is not None:
            try:
                sessions = list(self.sessions())
            except Exception:  # the app's listing failed: the gate's own still close
                log.exception("listing the sessions to end (%r) failed", self.sessions)
        return await self.state.connections.close_all(timeout=timeout, spread=spread,
                                                      sessions=sessions)

    # -- ASGI -------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.lifecycle is not None:  # startup=: the gate runs the lifecycle itself
            if scope["type"] == "lifespan":
                await self.lifecycle.lifespan(receive, send)
                return
            if not self.lifecycle.begun:  # no lifespan came (daphne): the first scope starts
                await self.lifecycle.begin()
        if not self._gated(scope):
            if scope["type"] == "lifespan":
                await run_lifespan(self.app, self.coord, scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if self.coord.status.state is State.READY and not (self._pacing and self.pacer.active):
            self.state.admitted[Admitted.IMMEDIATE] += 1  # the fast path: no I/O, no queue
            await self._run(scope, receive, send)
            return
        await self._gate(scope, receive, send)

    def _gated(self, scope: Scope) -> bool:
        """A WebSocket handshake, or an engine.io open; on the Socket.IO path, only an open
        (a WebSocket with a ``sid`` is a session's upgrade: it passes)."""
        kind: str = scope["type"]
        if kind not in ("websocket", "http") or not self.coord.settings.gate:
            return False
        path = self.socketio_prefix
        if path is None or not engineio.on_path(scope, path):
            return kind == "websocket"
        return engineio.is_open(scope)

    async def _gate(self, scope: Scope, receive: Receive, send: Send) -> None:
        coord = self.coord
        decision = decide(
            state=coord.state, phase=coord.current_phase, plan=coord.plan,
            has_slot=self.state.queue.has_room,
            expected_ready_in=coord.expected_ready_in(),
            wait_budget=coord.settings.wait_budget(coord.current_phase),
            max_queue_time=coord.settings.max_queue_time,
            max_retry_after=coord.settings.max_retry_after)
        if decision.action is REJECT:
            await self._reject(scope, receive, send, decision)
            return
        if decision.action is HOLD:
            await self._hold(scope, receive, send, decision.hold_for)
        elif self._pacing and self.pacer.active and not self.pacer.admit_now():
            # Ready, but admitting at a paced rate: wait for a token in the hold queue. No
            # fleet lease: the fleet cap bounds what starting instances hold.
            await self._hold(scope, receive, send, coord.settings.max_queue_time,
                             lease=False)
        else:
            self.state.admitted[Admitted.IMMEDIATE] += 1
            await self._run(scope, receive, send)

    async def _hold(self, scope: Scope, receive: Receive, send: Send, hold_for: float,
                    lease: bool = True) -> None:
        coord, state = self.coord, self.state
        client = _client_address(scope) if coord.settings.max_queue_per_client else None
        if client is not None and \
                state.held_by_client[client] >= coord.settings.max_queue_per_client:
            await self._reject(scope, receive, send, self._rejection(Reason.CLIENT_SHARE))
            return
        entry = state.queue.hold(hold_for)
        if entry is None:  # the queue filled between the decision and now
            await self._reject(scope, receive, send, self._rejection(Reason.QUEUE_FULL))
            return
        if client is not None:
            state.held_by_client[client] += 1
        pending: asyncio.Future[Message] | None = None
        try:  # from here on, however this ends, the slot and the lease are given back
            if lease and state.leases.enabled and not await self._lease(entry, hold_for):
                await self._reject(scope, receive, send, self._rejection(Reason.FLEET_CAP))
                return
            state.queue.held_total += 1  # a slot and (with a fleet cap) a lease: held
            with coord.waiting():
                if coord.state is State.READY:
                    self.pacer.kick()  # a paced hold: the pump releases it
                self._notify(Seen.HELD, None, 0.0)
                # The server's first message is websocket.connect (http.request: a polling
                # open, which has no body); the next one, before we accept (or answer), can
                # only be websocket.disconnect (http.disconnect): the client gave up.
                connect = await receive()
                pending = asyncio.ensure_future(receive())
                # One future ends the hold: the release, the hold's deadline, or (through
                # this callback) the client leaving. Awaiting it alone costs ~1 KiB less
                # per held handshake than asyncio.wait over both (bench/memory.py).
                pending.add_done_callback(functools.partial(_give_up, entry.future))
                outcome: HoldEnd = await entry.future
            waited = time.monotonic() - entry.enqueued_at
            state.leases.release(entry.conn)  # the hold is over, whatever happens next
            if outcome is GAVE_UP:  # the client went away while held
                state.rejected[GAVE_UP] += 1
                self._notify(Seen.GAVE_UP, None, waited)
                return
            if outcome is ADMIT and coord.state is State.READY:  # re-checked before handing over
                state.admitted[Admitted.AFTER_HOLD] += 1
                self._notify(Seen.RELEASED, None, waited)
                replay = _Replay(connect, pending, receive)
                pending = None  # now the app's to read
                await self._run(scope, replay, send)
                return
            reason = outcome if outcome is not ADMIT else reason_for(coord.state)
            self._notify(Seen.REJECTED, reason, waited)
            await self._reject(scope, _Replay(connect, None, receive), send,
                               self._rejection(reason), counted=False)
            state.rejected[reason] += 1
        finally:
            state.queue.forget(entry)
            state.leases.release(entry.conn)
            if client is not None:
                state.held_by_client[client] -= 1
                if not state.held_by_client[client]:
                    del state.held_by_client[client]
            if pending is not None and not pending.done():
                pending.cancel()

    async def _lease(self, entry: Hold, hold_for: float) -> bool:
        """With a fleet cap a held connection needs a lease too: False if refused.

        Redis unavailable means the local cap alone decides (the lease outcome is LOCAL).
        A hold that ended while the lease was asked for (released, failed, drained) is
        answered by its own outcome, not as ``fleet_cap``.
        """
        outcome = await self.state.leases.acquire(entry.conn, hold_for)
        return outcome is not REFUSED or entry.future.done()

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand the connection to the app, tracking it so a drain can close it (a polling
        open is answered at once: the session it opens is the app's, ``sessions``)."""
        if scope["type"] == "http":
            await self.app(scope, receive, send)
            return
        conn = self.state.queue.next_conn_id()  # one id space for holds and open connections
        await self.state.connections.run(self.app, scope, receive, send, conn)

    def _expired(self) -> None:
        self.state.rejected[Reason.MAX_AGE] += 1

    def _close_reason(self, reason: Reason) -> str:
        """The reason of a 1012 close: the rejection JSON, its hint spread."""
        hint = spread(self._rejection(reason).retry_after, self.coord.settings.max_retry_after)
        return reason_payload(reason, hint)

    def _rejection(self, reason: Reason) -> Decision:
        """A refusal for ``reason`` decided after the table's row (the queue or the fleet
        cap filled meanwhile, a hold ended): its hint from admission.rejection."""
        coord = self.coord
        ready = coord.state is State.READY
        return rejection(reason, state=coord.state, expected_ready_in=coord.expected_ready_in(),
                         wait_budget=coord.settings.wait_budget(coord.current_phase),
                         max_retry_after=coord.settings.max_retry_after,
                         paced_retry_after=self.pacer.retry_after() if ready else None)

    async def _reject(self, scope: Scope, receive: Receive, send: Send, decision: Decision,
                      counted: bool = True) -> None:
        reason = decision.reason or Reason.STARTING
        if counted:
            self.state.rejected[reason] += 1
            self._notify(Seen.REJECTED, reason, 0.0)
        cap = self.coord.settings.max_retry_after
        await reject(scope, receive, send, reason, spread(decision.retry_after, cap),
                     mode=self.coord.settings.reject)

    def _notify(self, what: Seen, reason: Reason | None, waited: float) -> None:
        for observer in self.observers:
            try:
                observer(what, reason, waited)
            except Exception:  # an observer's bug must not turn a clean answer into a 500
                log.exception("gate observer %r failed", observer)


def gate_of(coord: Coordinator) -> ConnectionGate | None:
    """The gate attached to ``coord`` (added as middleware, it is built at the first call)."""
    return next((g for g in coord.gates if isinstance(g, ConnectionGate)), None)


def _give_up(hold: asyncio.Future[HoldEnd], _pending: object) -> None:
    if not hold.done():
        hold.set_result(GAVE_UP)


class _Replay:
    """receive() for the app: the buffered connect, then the pending read, then live."""

    __slots__ = ("_connect", "_pending", "_receive")

    def __init__(self, connect: Message, pending: asyncio.Future[Message] | None,
                 receive: Receive) -> None:
        self._connect: Message | None = connect
        self._pending = pending
        self._receive = receive

    async def __call__(self) -> Message:
        if self._connect is not None:
            message, self._connect = self._connect, None
            return message
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return await pending
        return await self._receive()


def _client_address(scope: Scope) -> str | None:
    """The client's address as the server gives it (``scope["client"]``: the peer, or
    with the server's proxy-header support the forwarded one); None when it gives none."""
    client = scope.get("client")
    return str(client[0]) if client else None
