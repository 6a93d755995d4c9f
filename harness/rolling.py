"""A rolling deploy, for real: three backend instances behind HAProxy (deploy/haproxy.cfg)
on fixed ports, each restarted in turn (SIGTERM, its exit, a new process on the same
port, ready and back in HAProxy), while a population of clients stays connected through
it with the client helper (``coordinator.client.sessions``).

What each client saw is kept as it happened, from the client's side: every handshake
(its :class:`~coordinator.client.Attempt`, when it ended, which instance answered),
every close, and when it was chatting again. ``bench/rolling_deploy.py`` turns that into
figures, ``tests/e2e/test_rolling_deploy.py`` into counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from websockets import ConnectionClosed

from coordinator.client import CONNECTED, Attempt, GaveUp, RetryPolicy, Session, sessions

from .processes import BackendProcess, HAProxy, async_wait_until, free_port, haproxy_env

RECONNECT_CODES = (1012, 1013)


# -- what the clients saw --------------------------------------------------------------

@dataclass(frozen=True)
class Handshake:
    """One handshake attempt, as the client saw it."""

    client: int
    ended: float  # time.monotonic() when its outcome was known
    attempt: Attempt

    @property
    def connected(self) -> bool:
        return self.attempt.outcome == CONNECTED


@dataclass(frozen=True)
class Close:
    """The server closed a client's open connection."""

    client: int
    at: float  # time.monotonic()
    code: int
    reason: str  # the close frame's reason, as sent
    instance: str | None = None  # the instance that closed it (its welcome frame)

    @property
    def reason_json(self) -> Any:
        try:
            return json.loads(self.reason)
        except ValueError:
            return None


@dataclass
class Visit:
    """One ``connect`` made by ``sessions()``: the first one, or a reconnect after a close."""

    client: int
    after: Close | None  # the close it follows (None: the client's first connection)
    handshakes: list[Handshake]
    instance: str | None = None  # from the welcome frame
    chatting_at: float | None = None  # the echo of the client's text came back

    @property
    def served(self) -> bool:
        return self.chatting_at is not None

    @property
    def connected_at(self) -> float | None:
        return self.handshakes[-1].ended if self.handshakes and \
            self.handshakes[-1].connected else None


class Client:
    """One client that stays connected: chats once on every new session (sends its name,
    reads the echo), then listens until the server closes, and reconnects through
    ``sessions()`` when the close asks for it (1012, 1013)."""

    def __init__(self, index: int, url: str, policy: RetryPolicy | None) -> None:
        self.index = index
        self.url = url
        self.policy = policy
        self.text = f"client {index}"
        self.visits: list[Visit] = []
        self.closes: list[Close] = []
        self.chatting = False
        self.finished = False
        self.error: str | None = None
        self.ws: Any = None  # the open session's websocket while chatting
        self._pending: list[Handshake] = []

    def _on_attempt(self, attempt: Attempt) -> None:
        self._pending.append(Handshake(self.index, time.monotonic(), attempt))

    def _visit(self) -> Visit:
        visit = Visit(self.index, self.closes[-1] if self.closes else None, self._pending)
        self._pending = []
        self.visits.append(visit)
        return visit

    async def run(self) -> None:
        try:
            stream = cast(AsyncGenerator[Session, None],
                          sessions(self.url, policy=self.policy, on_attempt=self._on_attempt))
            async with contextlib.aclosing(stream):
                async for session in stream:
                    if await self._session(session, self._visit()):
                        return
            self.error = f"closed with {self.closes[-1].code if self.closes else '?'}"
        except GaveUp as exc:
            self._visit()
            self.error = f"gave up: {exc}"
        except ConnectionClosed as exc:  # 1011, or any close that is not a reconnect
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            if self._pending:  # closed during a handshake: that attempt was noted
                self._visit()
            else:
                self.closes.append(Close(self.index, time.monotonic(), code,
                                         exc.rcvd.reason if exc.rcvd is not None else "",
                                         self.visits[-1].instance if self.visits else None))
            self.error = f"closed with {code}"
        except Exception as exc:  # an HTTP 500, a wrong echo: raised at once by the helper
            if self._pending:
                self._visit()
            self.error = repr(exc)
        finally:
            self.chatting = False
            self.ws = None

    async def _session(self, session: Session, visit: Visit) -> bool:
        """Chat on a new session, then listen until it closes; True once finished."""
        ws = session.websocket
        welcome = json.loads(session.first_message or "{}")
        visit.instance = welcome.get("instance")
        try:
            await ws.send(self.text)
            echo = json.loads(await ws.recv())
            if echo.get("text") != self.text:
                raise AssertionError(f"client {self.index}: echo {echo!r}")
            visit.chatting_at = time.monotonic()
            self.chatting, self.ws = True, ws
            async for message in session.messages():  # ends quietly on 1012/1013
                if json.loads(message).get("text") == "final":
                    self.finished = True
                    return True
        except ConnectionClosed as exc:  # closed for a reconnect before the echo
            if exc.rcvd is None or exc.rcvd.code not in RECONNECT_CODES:
                raise
        self.chatting, self.ws = False, None
        self.closes.append(Close(self.index, time.monotonic(), ws.protocol.close_code or 1006,
                                 ws.protocol.close_reason or "", visit.instance))
        return False


class Population:
    """``size`` clients of ``url``, each a task, each staying connected."""

    def __init__(self, url: str, size: int, policy: RetryPolicy | None = None) -> None:
        self.clients = [Client(i, url, policy) for i in range(size)]
        self.tasks: list[asyncio.Task[None]] = []

    async def connect(self, rate: float, timeout: float) -> None:
        """Start the clients at ``rate`` per second; return when every one chats."""
        loop = asyncio.get_running_loop()
        begin = loop.time()
        for n, client in enumerate(self.clients):
            delay = begin + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.tasks.append(asyncio.create_task(client.run(), name=f"client-{n}"))
        await self.all_chatting(timeout, "every client to connect")

    def chatting(self) -> int:
        return sum(c.chatting for c in self.clients)

    def failed(self) -> list[str]:
        return [f"client {c.index}: {c.error}" for c in self.clients if c.error]

    async def all_chatting(self, timeout: float, what: str) -> None:
        def done() -> bool:
            failed = self.failed()
            if failed:
                raise RuntimeError(f"{len(failed)} client(s) failed: {failed[:5]}")
            return self.chatting() == len(self.clients)
        await async_wait_until(done, timeout, interval=0.05, what=what)

    async def finish(self, timeout: float) -> int:
        """Every client that chats sends ``final`` and leaves when its echo comes back:
        the proof that it is served at the end. Returns how many did."""
        for client in self.clients:
            if client.chatting and client.ws is not None:
                with contextlib.suppress(ConnectionClosed):
                    await client.ws.send("final")
        with contextlib.suppress(TimeoutError):
            await async_wait_until(lambda: all(t.done() for t in self.tasks), timeout,
                                   interval=0.05, what="the clients to finish")
        await self.stop()
        return sum(c.finished for c in self.clients)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    # -- what they saw, all together --

    def visits(self) -> Iterator[Visit]:
        for client in self.clients:
            yield from client.visits

    def handshakes(self) -> Iterator[Handshake]:
        for visit in self.visits():
            yield from visit.handshakes

    def closes(self) -> Iterator[Close]:
        for client in self.clients:
            yield from client.closes

    def outcomes(self) -> Counter[str]:
        """Every handshake's outcome (``connected``, ``http 503``, ``close 1011``, ...)."""
        return Counter(h.attempt.outcome for h in self.handshakes())

    def close_codes(self) -> Counter[int]:
        return Counter(c.code for c in self.closes())


# -- the fleet -------------------------------------------------------------------------

@dataclass
class Restart:
    """One instance's restart, in time.monotonic() seconds."""

    index: int
    sigterm: float
    down: float = 0.0  # HAProxy marked it down
    exited: float = 0.0
    exit_code: int | None = None
    listening: float = 0.0  # the new process answers /health/live
    ready: float = 0.0  # /health/ready answers 200
    up: float = 0.0  # HAProxy has it back
    # The old instance's gate counters once HAProxy had taken it out: what it turned away
    # between the SIGTERM and then (HAProxy replays those 503s itself).
    rejected_at_down: dict[str, int] = field(default_factory=dict)


@dataclass
class RollingFleet:
    """``size`` instances of ``python -m backend`` on fixed ports behind deploy/haproxy.cfg.

    Each life of instance ``n`` is ``COORD_INSTANCE_ID=i<n>.<life>`` (a restarted one is a
    new instance on the old one's port, as a new pod or container is). ``env`` is every
    instance's environment on top of Redis, namespace and id.
    """

    redis_url: str
    namespace: str
    logs: Path
    env: Mapping[str, str]
    size: int = 3
    ports: list[int] = field(default_factory=list)
    backends: list[BackendProcess] = field(default_factory=list)
    retired: list[BackendProcess] = field(default_factory=list)
    proxy: HAProxy | None = None
    _lives: list[int] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.ports = self.ports or [free_port() for _ in range(self.size)]
        self._lives = [0] * self.size

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    def instance_id(self, index: int) -> str:
        return f"i{index + 1}.{self._lives[index]}"

    def _backend(self, index: int) -> BackendProcess:
        env = {"COORD_REDIS_URL": self.redis_url, "COORD_NAMESPACE": self.namespace,
               "COORD_INSTANCE_ID": self.instance_id(index), "COORD_ENVIRONMENT": "test",
               **self.env}
        return BackendProcess(env, self.logs / f"{self.instance_id(index)}.log",
                              port=self.ports[index])

    async def start(self, timeout: float = 60) -> None:
        """Start every instance, then HAProxy; return when HAProxy has them all up."""
        self.backends = [self._backend(i) for i in range(self.size)]
        for backend in self.backends:
            backend.start(wait=False)
        for backend in self.backends:
            await self._ready(backend, timeout)
        env = haproxy_env(self.ports, free_port(), self.logs / "haproxy.sock")
        self.proxy = await asyncio.to_thread(HAProxy, env, self.logs / "haproxy.log")
        await async_wait_until(self._all_up, timeout, interval=0.05,
                               what="haproxy to see every instance up")

    @staticmethod
    async def _ready(backend: BackendProcess, timeout: float) -> None:
        def ready() -> bool:
            if backend.proc is not None and backend.proc.poll() is not None:
                raise RuntimeError(f"{backend.log_path.name} exited:\n{backend.log()[-3000:]}")
            return backend.get("/health/ready")[0] == 200
        await async_wait_until(lambda: asyncio.to_thread(ready), timeout, interval=0.02,
                               what=f"{backend.log_path.stem} to be ready")

    async def _status(self, index: int) -> str:
        assert self.proxy is not None
        row = await asyncio.to_thread(self.proxy.server, index)
        return row["status"]

    async def _all_up(self) -> bool:
        return all([await self._status(i) == "UP" for i in range(self.size)])

    async def restart(self, index: int, timeout: float = 60) -> Restart:
        """SIGTERM instance ``index``, wait for its exit, start a new one on its port; return
        when it is ready and HAProxy has it back up."""
        old = self.backends[index]
        times = Restart(index, time.monotonic())
        old.signal(signal.SIGTERM)
        await async_wait_until(lambda: self._is_down(index), timeout, interval=0.02,
                               what=f"haproxy to take instance {index + 1} out")
        times.down = time.monotonic()
        times.rejected_at_down = await self.rejected(old)
        times.exit_code = await asyncio.to_thread(old.wait_exit, None, timeout)
        times.exited = time.monotonic()
        self.retired.append(old)
        self._lives[index] += 1
        new = self.backends[index] = self._backend(index)
        await asyncio.to_thread(new.start, True)
        times.listening = time.monotonic()
        await self._ready(new, timeout)
        times.ready = time.monotonic()
        await async_wait_until(lambda: self._is_up(index), timeout, interval=0.02,
                               what=f"haproxy to put instance {index + 1} back")
        times.up = time.monotonic()
        return times

    @staticmethod
    async def rejected(backend: BackendProcess) -> dict[str, int]:
        """The instance's own count of rejected handshakes, by reason (its health body)."""
        _status, body = await asyncio.to_thread(backend.get, "/health/ready")
        return dict(body.get("rejected", {})) if isinstance(body, dict) else {}

    async def _is_down(self, index: int) -> bool:
        return (await self._status(index)).startswith("DOWN")

    async def _is_up(self, index: int) -> bool:
        return await self._status(index) == "UP"

    def stop(self) -> None:
        """Stop what is left: the instances at once (SIGINT ends a drain before it
        starts), then HAProxy."""
        for backend in self.backends:
            if backend.proc is not None and backend.proc.poll() is None:
                backend.signal(signal.SIGINT)
        for backend in self.backends:
            if backend.proc is not None:
                backend.wait_exit(None, 15)
        if self.proxy is not None:
            self.proxy.stop()

    def logs_of(self) -> str:
        """Every instance's log, for a failure's message."""
        return "\n".join(f"--- {b.log_path.name}\n{b.log()[-3000:]}"
                         for b in [*self.retired, *self.backends])
