"""The coordinator of one instance: its status, its Redis link, and who is told of changes.

What every process does lives here: hold the status in memory (Redis only mirrors it),
keep the Redis link, wake those waiting for ready, tell the gate and other listeners of
every change, start and stop. What depends on the role is chosen once, at construction:
an :class:`~coordinator.instance.owner.Owner` runs the startup sequence and publishes it; a
:class:`~coordinator.instance.follower.Follower` gates connections for an instance whose startup
runs elsewhere and learns its status from Redis.

Every background task is started through ``self.tasks`` and cancelled and awaited by
:meth:`Coordinator.stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator

import redis.asyncio as redis

from coordinator import __version__, logs
from coordinator._redis.client import REDIS_ERRORS, make_redis, refused
from coordinator._redis.subscription import Subscription
from coordinator._tasks import TaskSet
from coordinator.contract.events import DropCounter, decode_event
from coordinator.contract.keys import Keys
from coordinator.contract.phases import Event, PhasePlan, State
from coordinator.contract.record import CapMode
from coordinator.contract.signing import UNSIGNED
from coordinator.exceptions import InvalidMessage, UsageError
from coordinator.fleet.registry import read_phase_stats
from coordinator.instance.follower import Follower
from coordinator.instance.interfaces import Gate, GateCounts, RolePart
from coordinator.instance.owner import Owner
from coordinator.instance.status import Status
from coordinator.settings import Role, Settings

log = logging.getLogger("coordinator")
START_LINK_WAIT = 1.0
LEAVE_TIMEOUT = 2.0  # seconds a clean stop may take to remove the record, index entry, leases
STOP_DEADLINE = 3.0  # seconds the whole of stop() may take: leases, leaving, tasks, client
NOPERM_LINK = ("redis at %s refused a command (NOPERM): %s; this instance's ACL lacks a "
               "permission it needs (docs/security.md); gating on local state meanwhile")


class Change(enum.StrEnum):
    """What a listener is told changed."""

    STATE = "state"  # the instance's state (the gate has already acted on it)
    LINK = "redis"  # the Redis link went up or down
    DROP = "drop"  # an invalid message was dropped


Listener = Callable[[Change, "Coordinator"], None]


class Coordinator:
    """One instance's view of its own startup, shared with the fleet through Redis.

    ``settings`` says everything (``Settings.from_env()`` reads ``COORD_*``). ``role``
    (default ``settings.role``) is ``owner`` for the process that runs the startup
    phases (``async with coord.phase(name)``), ``follower`` for a process that only gates
    connections for an instance whose startup runs elsewhere. ``client`` replaces the
    Redis client the coordinator would make from ``settings.redis_url`` (and then is not
    closed by :meth:`stop`).

    The status lives in memory and Redis mirrors it, so an instance starts, gates and
    becomes ready with Redis down. Use it as ``async with Coordinator(settings) as
    coord:`` or call :meth:`start` and :meth:`stop` from the application's lifespan.
    """

    def __init__(self, settings: Settings, *, role: Role | str | None = None,
                 client: redis.Redis | None = None) -> None:
        try:
            self.role = Role(settings.role if role is None else role)
        except ValueError:
            raise UsageError("role must be 'owner' or 'follower'") from None
        self.settings = settings
        self.id = settings.instance_id
        self.keys = Keys(settings.namespace)
        self.keyring = settings.keyring
        self.plan = PhasePlan(settings.phases, settings.ready_phase, settings.near_ready_phases)
        self.redis = client if client is not None else make_redis(
            settings.redis_url, namespace=settings.namespace, mode=settings.redis_mode,
            health_check_interval=settings.heartbeat_interval * 2)
        self._owns_client = client is None
        self.version = __version__
        self.host = socket.gethostname()

        now = time.time()
        self.status = Status(started_at=now if self.role is Role.OWNER else None)
        self.updated_at = now
        self.ready_at: float | None = None
        self.phase_stats: dict[str, float] = {}
        self.drops = DropCounter()
        self.redis_ok = False
        self.redis_errors = 0
        self.failure: str | None = None  # why a phase failed, once one did
        self.listeners: list[Listener] = []
        self.gates: list[Gate] = []
        self.gate_observers: list[Callable[..., None]] = []
        self.tasks = TaskSet("coordinator", log)

        self._ready_waiters: set[asyncio.Future[State]] = set()
        self._waiting = 0
        self._link_attempted = asyncio.Event()
        self._started = False
        self._stopped = False
        self._stopping: asyncio.Task[None] | None = None
        self._role: RolePart
        if self.role is Role.OWNER:
            self.owner: Owner | None = Owner(self)
            self._role = self.owner
        else:
            self.owner = None
            self._role = Follower(self)

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

    @property
    def phase_durations(self) -> dict[str, float]:
        """This startup's completed phases and how long each took (the owner's)."""
        return self.owner.phase_durations if self.owner is not None else {}

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

    # -- who is told --------------------------------------------------------------

    def attach(self, gate: Gate) -> None:
        """Let ``gate`` act on every state change before anyone else hears of it."""
        self.gates.append(gate)

    def observe_gates(self, observer: Callable[..., None]) -> None:
        """Tell ``observer`` of every handshake's end at every gate of this coordinator,
        those attached now and those attached later (a gate added with
        ``add_middleware`` is built at the app's first call): what the metrics' hold-time
        histogram needs, with no gate at hand."""
        self.gate_observers.append(observer)
        for gate in self.gates:
            gate.observe(observer)

    def gate_counts(self, link_up: bool = False) -> GateCounts:
        """The attached gates' figures, summed; without a gate, the configured caps."""
        if self.gates:
            return GateCounts.total([g.counts(link_up) for g in self.gates])
        cap = self.settings.fleet_max_queue
        mode = (CapMode.OFF if cap is None else CapMode.FLEET if self.redis_ok or link_up
                else CapMode.LOCAL)
        return GateCounts(queue_max=self.settings.max_queue, fleet_cap=cap, fleet_cap_mode=mode)

    def _tell(self, change: Change) -> None:
        """Notify listeners (metrics, dashboards); one that raises is logged, not fatal."""
        for listener in self.listeners:
            try:
                listener(change, self)
            except Exception:
                log.exception("coordinator listener %r failed on %s", listener, change)

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the Redis link (and, for an owner, heartbeat and publisher).

        Waits at most ``START_LINK_WAIT`` for the first connection attempt, so that with
        Redis up the first events are published, and with Redis down start-up goes on.
        """
        if self._started:
            return
        self._started = True
        logs.ensure_visible()
        if self.keyring is None:
            log.warning(UNSIGNED, self.settings.namespace)
        link = Subscription(self.redis, [self.keys.instance_events(self.id)],
                            on_message=self._on_message, on_up=self._on_link_up,
                            on_error=self.link_lost, healthy=lambda: self.redis_ok,
                            name="redis link")
        self.tasks.spawn(link.run(), "link")
        self._role.start()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._link_attempted.wait(), START_LINK_WAIT)

    async def stop(self) -> None:
        """Reject whatever is held, leave the fleet view, cancel every task, close.

        One stop, whoever asks and however often: it runs as a task of its own that every
        caller awaits, so a caller cancelled midway (a second signal) leaves it to finish.
        Bounded by ``STOP_DEADLINE`` as a whole.
        """
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop(),
                                                                   name="coordinator-stop")
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        self._stopped = True
        self.set_status(Status(State.STOPPED, self.status.phase, self.status.phase_index,
                                time.time(), self.status.started_at))
        try:
            async with asyncio.timeout(STOP_DEADLINE):
                for gate in self.gates:
                    await gate.aclose()
                if self.redis_ok:
                    with contextlib.suppress(*REDIS_ERRORS):
                        await asyncio.wait_for(self._role.leave(), LEAVE_TIMEOUT)
                await self.tasks.cancel()
                if self._owns_client:
                    with contextlib.suppress(*REDIS_ERRORS):
                        await self.redis.aclose()
        except TimeoutError:
            log.warning("instance %s: stop took over %.0fs; left unfinished", self.id,
                        STOP_DEADLINE)

    async def __aenter__(self) -> Coordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- transitions ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def phase(self, name: str) -> AsyncIterator[None]:
        """Run one startup phase. An owner's is the instance's (:meth:`Owner.phase`:
        timed, published); a follower's builds what this process needs and is its own
        (:meth:`Follower.phase`: a follower that runs its ready phase admits no one
        before that phase has completed here too)."""
        async with self._role.phase(name):
            yield

    def fail(self, why: str, error: BaseException | None = None) -> None:
        """A phase failed: held connections are rejected at once; ``failed`` published;
        ``error`` logged with its traceback. ``failure`` keeps ``why`` for good: the
        liveness probe answers 503 from now on, draining or not."""
        if self.state in (State.DRAINING, State.STOPPED):
            log.warning("instance %s: %s (while %s; ignored)", self.id, why, self.state,
                        exc_info=error)
            return
        self.failure = why
        log.error("instance %s failed: %s", self.id, why, exc_info=error)
        self.set_status(Status(State.FAILED, self.status.phase, self.status.phase_index,
                                time.time(), self.status.started_at))
        self._role.emit(Event.FAILED, error=why[:200])

    def begin_drain(self) -> None:
        """Reject held and new handshakes from now on; publish ``draining`` at once."""
        if self.state in (State.DRAINING, State.STOPPED):
            return
        self.set_status(Status(State.DRAINING, self.status.phase, self.status.phase_index,
                                time.time(), self.status.started_at))
        self._role.emit(Event.DRAINING)

    def set_status(self, status: Status) -> None:
        """Move to ``status`` (the role's call): the gates act on it first (release
        before publish), then the waiters for ready, then the listeners."""
        previous = self.status.state
        self.status = status
        self.updated_at = time.time()
        if status.state is previous:
            return
        if status.state is State.READY and self.ready_at is None:
            self.ready_at = self.updated_at
        for gate in self.gates:
            gate.on_state(status.state)
        if status.state is not State.STARTING:
            for waiter in self._ready_waiters:
                if not waiter.done():
                    waiter.set_result(status.state)
        self._tell(Change.STATE)

    # -- waiting for ready ----------------------------------------------------------

    async def wait_ready(self, timeout: float) -> bool:
        """True once the instance is ready; False on timeout, failure or drain."""
        if self.is_ready:
            return True
        if self.state is not State.STARTING:
            return False
        future: asyncio.Future[State] = asyncio.get_running_loop().create_future()
        self._ready_waiters.add(future)
        try:
            with self.waiting():
                return await asyncio.wait_for(future, timeout) is State.READY
        except TimeoutError:
            return False
        finally:
            self._ready_waiters.discard(future)

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Someone waits for ready inside this block (a held handshake, ``wait_ready``):
        a follower makes sure its safety-net poll of the instance hash runs meanwhile."""
        self._waiting += 1
        try:
            if self._started and not self._stopped and self.state is State.STARTING:
                self._role.wanted()
            yield
        finally:
            self._waiting -= 1

    @property
    def anyone_waiting(self) -> bool:
        return self._waiting > 0

    # -- the Redis link -------------------------------------------------------------

    async def _on_link_up(self) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            self.phase_stats = await read_phase_stats(self.redis, self.keys,
                                                               self.plan.phases)
        published = self.status
        await self._role.on_link_up()
        if not self.redis_ok:
            log.info("redis link up (%s)", self.settings.redis_url_redacted)
        self.redis_ok = True
        for gate in self.gates:
            gate.on_link_up()
        self._role.after_link_up(published)
        self._link_attempted.set()
        self._tell(Change.LINK)

    def link_lost(self, exc: BaseException) -> None:
        """A Redis command failed (the link's, or a role's): gate on local state and say
        so once; the link reconnects by itself."""
        self._link_attempted.set()
        self.redis_errors += 1
        if refused(exc):  # at every attempt: it will not heal by itself
            log.error(NOPERM_LINK, self.settings.redis_url_redacted, exc)
        if not self.redis_ok and self.redis_errors == 1:
            log.warning("redis unavailable (%s): %s; gating on local state, retrying in the "
                        "background", self.settings.redis_url_redacted, type(exc).__name__)
        if self.redis_ok:
            log.warning("redis link lost (%s): %s; gating on local state until it returns",
                        self.settings.redis_url_redacted, type(exc).__name__)
            self.redis_ok = False
            self._tell(Change.LINK)

    def _on_message(self, channel: str, data: object) -> None:
        try:
            msg = decode_event(data if isinstance(data, (bytes, str)) else b"",
                                  keyring=self.keyring,
                                  expected_instance=self.id)
        except InvalidMessage as exc:
            self.dropped(exc, channel)
            return
        self._role.on_message(msg)

    def dropped(self, error: InvalidMessage, where: str) -> None:
        """Count (and, rate-limited, log) invalid data read from ``where``."""
        self.drops.drop(error, where)
        self._tell(Change.DROP)

    def count_drop(self, reason: str) -> None:
        """Count something of the instance's own that was dropped (an event the outbox
        had no room for) beside the invalid messages, and tell the listeners."""
        self.drops.counts[reason] += 1
        self._tell(Change.DROP)
