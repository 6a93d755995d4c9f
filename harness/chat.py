"""Real ``websockets`` clients for the end-to-end tests, and what each one saw.

A client either chats (welcome frame, then an echo of the text it sends) or ends in one
of the ways a handshake can end: refused with an HTTP status, accepted and closed with a
code, dropped by the server before any response, or given up by the client itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from websockets import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.asyncio.client import connect

from harness.processes import BackendProcess, wait_until

CHAT = "chat"  # welcome + echo
HTTP = "http"  # handshake refused with an HTTP status (the gate: 503 + Retry-After)
CLOSE = "close"  # accepted, then closed with a code (1011 from the race, 1013 from the gate)
DROPPED = "dropped"  # the server closed the TCP connection without any HTTP response
GAVE_UP = "gave_up"  # the client's own open timeout ran out
REFUSED = "refused"  # no server listening (any more): the TCP connection was refused
IMPLEMENTATIONS = ("websockets", "websockets-sansio", "wsproto")
NEAR_READY_DURATIONS = "init=0,dependencies=0,database=0,cache=0.2"


@dataclass
class Outcome:
    kind: str
    elapsed: float
    status: int | None = None
    code: int | None = None
    retry_after: str | None = None
    reason: Any = None  # the JSON of a refusal body or close reason, else its text
    welcome: dict[str, Any] | None = None
    echo: dict[str, Any] | None = None
    sent: str | None = None

    @property
    def rejection(self) -> str | None:
        """The gate's reason (``queue_full``, ``failed``, ...) for a clean rejection."""
        if isinstance(self.reason, dict) and self.kind in (HTTP, CLOSE):
            return self.reason.get("reason")
        return None


async def chat(url: str, text: str = "hello", open_timeout: float | None = 20.0,
               **connect_kwargs: Any) -> Outcome:
    """Open a WebSocket, read the welcome, send ``text``, read the echo; ``connect_kwargs``
    go to websockets' connect (``local_addr=("127.0.0.2", 0)``: another client address)."""
    start = time.monotonic()
    try:
        async with connect(url, open_timeout=open_timeout, **connect_kwargs) as ws:
            welcome = json.loads(await ws.recv())
            await ws.send(text)
            echo = json.loads(await ws.recv())
        return Outcome(CHAT, time.monotonic() - start, welcome=welcome, echo=echo, sent=text)
    except InvalidStatus as exc:
        response = exc.response
        return Outcome(HTTP, time.monotonic() - start, status=response.status_code,
                       retry_after=response.headers.get("Retry-After"),
                       reason=_parse(response.body), sent=text)
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        return Outcome(CLOSE, time.monotonic() - start, code=rcvd.code if rcvd else 1006,
                       reason=_parse(rcvd.reason) if rcvd else None, sent=text)
    except InvalidMessage as exc:  # EOF where the HTTP response should be
        return Outcome(DROPPED, time.monotonic() - start, reason=repr(exc.__cause__), sent=text)
    except TimeoutError:
        return Outcome(GAVE_UP, time.monotonic() - start, sent=text)
    except ConnectionRefusedError:
        return Outcome(REFUSED, time.monotonic() - start, sent=text)


async def storm(url: str, count: int, open_timeout: float | None = 20.0) -> list[Outcome]:
    """``count`` clients at once, each sending its own text."""
    return list(await asyncio.gather(*(chat(url, f"client {i}", open_timeout)
                                       for i in range(count))))


def tally(outcomes: Iterable[Outcome]) -> Counter[str]:
    """``chat``, ``http 503 queue_full``, ``close 1011``, ...: for assertions and messages."""
    out: Counter[str] = Counter()
    for o in outcomes:
        if o.kind == CHAT:
            out[CHAT] += 1
        elif o.kind == HTTP:
            out[f"http {o.status} {o.rejection}"] += 1
        elif o.kind == CLOSE:
            out[f"close {o.code} {o.rejection or ''}".strip()] += 1
        else:
            out[o.kind] += 1
    return out


def assert_chatted(outcome: Outcome, instance: str) -> None:
    assert outcome.kind == CHAT, outcome
    assert outcome.welcome == {"type": "welcome", "instance": instance}
    assert outcome.echo is not None and outcome.echo["text"] == outcome.sent, outcome


def assert_clean_rejection(outcome: Outcome, mode: str, reason: str) -> None:
    """HTTP 503 with an integer Retry-After >= 1, or (COORD_REJECT=close) a 1013 close,
    both carrying JSON ``{"reason", "retry_after"}``."""
    assert outcome.rejection == reason, outcome
    retry_after = outcome.reason["retry_after"]
    assert isinstance(retry_after, int) and retry_after >= 1, outcome
    if mode == "http":
        assert outcome.kind == HTTP and outcome.status == 503, outcome
        assert outcome.retry_after is not None and outcome.retry_after.isdigit(), outcome
        assert int(outcome.retry_after) == retry_after >= 1, outcome
    else:
        assert outcome.kind == CLOSE and outcome.code == 1013, outcome


def backend_env(*, redis_url: str, namespace: str, instance: str | None = None,
                **extra: str) -> dict[str, str]:
    """A backend's environment: its Redis, namespace and instance id (``<namespace>-i1``
    unless named), and ``extra`` variables. Keyword-only: the two strings cannot swap."""
    return {"COORD_REDIS_URL": redis_url, "COORD_NAMESPACE": namespace,
            "COORD_INSTANCE_ID": instance or f"{namespace}-i1", **extra}


def health(backend: BackendProcess) -> tuple[int, dict[str, Any]]:
    status, body = backend.get("/health/ready")
    assert isinstance(body, dict), (status, body)
    return status, body


def wait_for_phase(backend: BackendProcess, phases: Iterable[str], timeout: float = 15) -> None:
    """Wait until the instance is still starting, in one of ``phases``."""
    wanted = set(phases)

    def reached() -> bool:
        _status, body = backend.get("/health/ready")
        if not isinstance(body, dict):
            return False
        assert body["state"] == "starting", f"instance left starting before {wanted}: {body}"
        return body["phase"] in wanted

    wait_until(reached, timeout, what=f"phase in {sorted(wanted)}")


def counters(body: Mapping[str, Any]) -> dict[str, Any]:
    """The gate's counters from /health/ready, for comparing with what clients saw."""
    queue = body["queue"]
    return {"admitted": body["admitted"], "rejected": body["rejected"],
            "held_total": queue["held_total"], "released_total": queue["released_total"],
            "depth": queue["depth"]}


def _parse(raw: bytes | bytearray | str | None) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace") if isinstance(raw, bytes) else raw
