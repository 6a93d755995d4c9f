"""Connect to a gated WebSocket service politely: retry what the gate asks to be retried,
back off with full jitter, give up within bounds.

The gate refuses a handshake with HTTP 503 and ``Retry-After``, or (``COORD_REJECT=close``,
or where the server cannot send a denial response) by accepting it and closing at once
with 1013 (try again later) or 1012 (service restart) and a JSON reason carrying
``retry_after``. Each is retried no sooner than the server's hint, plus a random delay
drawn from a window that doubles with every attempt ("full jitter"), so a fleet that
restarts does not get all of its clients back in the same instant. Refused connections,
dropped handshakes, open timeouts and other network errors (an instance restarting, a load
balancer with no server up) are retried the same way without a hint; a host name that does
not resolve and a certificate that does not verify are not. Everything else, close code 1011
above all, is raised at once: retrying would hide a bug.

    async with connect("wss://chat.example.com/ws") as session:
        print(session.first_message)        # the server's first frame
        await session.websocket.send("hi")

Bounds: at most ``max_attempts`` handshakes, and no attempt (handshake included) runs
past ``max_time`` seconds after the first one started.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
)
from websockets import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from coordinator._backoff import Backoff
from coordinator.exceptions import CoordinatorError, UsageError

RETRY_STATUSES = frozenset({502, 503, 504})  # the gate's 503; a load balancer's 502/504
RETRY_CLOSE_CODES = frozenset({1012, 1013, 4012, 4013})  # 401x: their twins under daphne

CONNECTED = "connected"


@dataclass(frozen=True)
class RetryPolicy:
    """How :class:`connect` retries: bounds, backoff, and how long a handshake may take.

    ``max_attempts`` handshakes at most, none running past ``max_time`` seconds after the
    first began; each retry waits the server's hint plus full jitter from a window of
    ``base_delay`` doubling up to ``max_delay``. ``open_timeout`` is one handshake's limit
    (longer than the gate's longest hold, so a held handshake is not abandoned), and
    ``first_message_timeout`` how long to wait for the server's first frame (an
    accept-then-1013 is a refusal, not a connection); None for servers that do not speak
    first.
    """

    max_attempts: int = 10
    max_time: float = 60.0  # seconds from the first attempt's start
    base_delay: float = 0.25  # the first retry's jitter window
    max_delay: float = 10.0  # the jitter window never grows past this
    # Longer than COORD_MAX_QUEUE_TIME (30 s), so a held handshake is not abandoned.
    open_timeout: float = 40.0
    # How long to wait for the server's first frame (never past max_time); None: do not wait.
    first_message_timeout: float | None = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise UsageError("max_attempts must be >= 1")
        for name in ("max_time", "base_delay", "max_delay", "open_timeout"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be > 0")
        if self.first_message_timeout is not None and not self.first_message_timeout > 0:
            raise UsageError("first_message_timeout must be > 0 or None")

    def jitter(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, base_delay * 2**(attempt - 1))]."""
        return Backoff(self.base_delay, self.max_delay).delay(attempt)


@dataclass(frozen=True)
class Attempt:
    """One handshake and how it ended."""

    number: int
    outcome: str  # "connected", "http 503", "close 1013", "close 1011", "refused", ...
    duration: float  # seconds from starting the handshake to its outcome (a hold included)
    retry_after: float | None = None  # the server's hint, if it gave one
    reason: str | None = None  # the gate's reason (starting, queue_full, draining, ...)


class GaveUp(CoordinatorError):
    """Every attempt allowed by the policy was refused; ``attempts`` says how."""

    def __init__(self, url: str, attempts: list[Attempt], last: BaseException) -> None:
        self.url = url
        self.attempts = attempts
        self.last = last
        outcomes = ", ".join(a.outcome for a in attempts)
        super().__init__(f"gave up on {url} after {len(attempts)} attempt(s): {outcomes}")


class _Refused(Exception):
    """A retryable refusal, carrying its attempt record."""

    def __init__(self, attempt: Attempt) -> None:
        super().__init__(attempt.outcome)
        self.attempt = attempt


@dataclass
class Session:
    websocket: ClientConnection
    first_message: str | bytes | None
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def held_for(self) -> float:
        """How long the successful handshake took (the time the gate held it)."""
        return self.attempts[-1].duration if self.attempts else 0.0

    async def messages(self) -> AsyncIterator[str | bytes]:
        """The server's messages until it closes the connection; a close that asks for a
        reconnect (1012, 1013: a drain, a maximum age) ends the iteration quietly, any
        other error close (1011) raises ``ConnectionClosedError``."""
        try:
            async for message in self.websocket:
                yield message
        except ConnectionClosed as exc:
            if exc.rcvd is None or exc.rcvd.code not in RETRY_CLOSE_CODES:
                raise

    async def close(self) -> None:
        await self.websocket.close()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class connect:
    """``await connect(url)`` or ``async with connect(url) as session``.

    ``on_attempt`` is called after every handshake with its :class:`Attempt`, the last
    one included whatever its end (for progress displays and statistics); other keyword
    arguments go to ``websockets.asyncio.client.connect``.
    Raises :class:`GaveUp` when the policy's bounds run out, and any error that is not
    worth retrying (a 1011 close, HTTP 403, a bad URL) as it comes.
    """

    def __init__(self, url: str, *, policy: RetryPolicy | None = None,
                 on_attempt: Callable[[Attempt], None] | None = None,
                 **connect_kwargs: Any) -> None:
        self.url = url
        self.policy = policy or RetryPolicy()
        self.on_attempt = on_attempt
        self.connect_kwargs = connect_kwargs
        self._session: Session | None = None

    def __await__(self) -> Generator[Any, None, Session]:
        return self._open().__await__()

    async def __aenter__(self) -> Session:
        self._session = await self._open()
        return self._session

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def _open(self) -> Session:
        policy = self.policy
        attempts: list[Attempt] = []
        deadline = time.monotonic() + policy.max_time
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.max_attempts) | stop_before_delay(policy.max_time),
            wait=lambda state: _delay(policy, state),
            retry=retry_if_exception_type(_Refused),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    number = attempt.retry_state.attempt_number
                    session = await self._attempt(number, deadline, attempts)
        except _Refused as exc:
            raise GaveUp(self.url, attempts, exc.__cause__ or exc) from exc.__cause__
        session.attempts = attempts
        return session

    async def _attempt(self, number: int, deadline: float, attempts: list[Attempt]) -> Session:
        policy = self.policy
        started = time.monotonic()
        timeout = max(0.001, min(policy.open_timeout, deadline - started))
        try:
            websocket = await ws_connect(self.url, open_timeout=timeout, **self.connect_kwargs)
        except Exception as exc:
            raise self._refused(attempts, exc, number, started) from exc
        first: str | bytes | None = None
        if policy.first_message_timeout is not None:
            try:
                remaining = max(0.001, deadline - time.monotonic())
                async with asyncio.timeout(min(policy.first_message_timeout, remaining)):
                    first = await websocket.recv()
            except Exception as exc:
                await websocket.close()
                raise self._refused(attempts, exc, number, started) from exc
            except BaseException:  # cancelled: do not leave the server a connection
                try:
                    await websocket.close()
                finally:
                    websocket.transport.abort()  # if the close was cut short; else a no-op
                raise
        self._note(attempts, Attempt(number, CONNECTED, time.monotonic() - started))
        return Session(websocket, first)

    def _refused(self, attempts: list[Attempt], exc: Exception, number: int,
                 started: float) -> _Refused:
        """Note the attempt; the retryable form of ``exc``, or ``exc`` itself raised."""
        record, retryable = _classify(exc, number, time.monotonic() - started)
        self._note(attempts, record)
        if not retryable:
            raise exc
        return _Refused(record)

    def _note(self, attempts: list[Attempt], record: Attempt) -> None:
        attempts.append(record)
        if self.on_attempt is not None:
            self.on_attempt(record)


def _delay(policy: RetryPolicy, state: RetryCallState) -> float:
    """The server's hint (if any) is a floor; full jitter spreads the clients above it."""
    hint = 0.0
    if state.outcome is not None:
        exc = state.outcome.exception()
        if isinstance(exc, _Refused) and exc.attempt.retry_after is not None:
            hint = exc.attempt.retry_after
    return hint + policy.jitter(state.attempt_number)


def _classify(exc: BaseException, number: int, duration: float) -> tuple[Attempt, bool]:
    """The attempt record of a failed handshake, and whether it is worth retrying."""
    if isinstance(exc, InvalidStatus):
        response = exc.response
        reason, hint = _gate_reason(response.body)
        header = _seconds(response.headers.get("Retry-After"))
        return (Attempt(number, f"http {response.status_code}", duration,
                        header if header is not None else hint, reason),
                response.status_code in RETRY_STATUSES)
    if isinstance(exc, ConnectionClosed):
        if exc.rcvd is None:  # no close frame: the server went away
            return Attempt(number, "dropped", duration), True
        reason, hint = _gate_reason(exc.rcvd.reason)
        return (Attempt(number, f"close {exc.rcvd.code}", duration, hint, reason),
                exc.rcvd.code in RETRY_CLOSE_CODES)
    if not isinstance(exc, _NOT_RETRIED):
        for kinds, outcome in _RETRIED_ERRORS:
            if isinstance(exc, kinds):
                return Attempt(number, outcome, duration), True
    return Attempt(number, f"error {type(exc).__name__}", duration), False


_RETRIED_ERRORS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...] = (
    (InvalidMessage, "dropped"),  # the connection ended before an HTTP response
    (TimeoutError, "timeout"),
    (ConnectionRefusedError, "refused"),
    ((ConnectionResetError, ConnectionAbortedError, EOFError), "reset"),
    # Any other network error, e.g. "Multiple exceptions: ..." when every address of a
    # host with IPv4 and IPv6 ones refused the connection.
    (OSError, "unreachable"),
)
# A host name that does not resolve, or a certificate that does not verify: retrying
# would not help.
_NOT_RETRIED = (socket.gaierror, ssl.SSLCertVerificationError)


def _gate_reason(raw: bytes | bytearray | str | None) -> tuple[str | None, float | None]:
    """``{"reason": ..., "retry_after": N}`` as the gate writes it; (None, None) if not."""
    if not raw:
        return None, None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    reason = doc.get("reason")
    return (reason if isinstance(reason, str) else None), _seconds(doc.get("retry_after"))


def _seconds(value: Any) -> float | None:
    """A non-negative number of seconds from a header or a JSON field; None otherwise."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if 0 <= seconds < 86400 else None


async def sessions(url: str, *, policy: RetryPolicy | None = None,
                   on_attempt: Callable[[Attempt], None] | None = None,
                   **connect_kwargs: Any) -> AsyncIterator[Session]:
    """Stay connected: yield a :class:`Session`, and when the server closes it with 1012
    or 1013 (a drain, ``COORD_MAX_CONNECTION_AGE``), wait its hint plus full jitter and
    yield a new one.

        async for session in sessions("wss://chat.example.com/ws"):
            async for message in session.messages():
                ...              # ends when the server closes; the loop reconnects

    Ends when a session closes otherwise (a normal close, 1011, the network), or when a
    reconnect gives up (:class:`GaveUp`, raised). Leaving the loop closes the session.
    """
    policy = policy or RetryPolicy()
    while True:
        session = await connect(url, policy=policy, on_attempt=on_attempt, **connect_kwargs)
        try:
            yield session
        finally:
            await session.close()
        closed = session.websocket.protocol  # its close_code: websockets 13 and later
        code = closed.close_code  # (the connection's own appeared in 15)
        if code not in RETRY_CLOSE_CODES:
            return
        _reason, hint = _gate_reason(closed.close_reason)
        await asyncio.sleep((hint or 0.0) + policy.jitter(1))
