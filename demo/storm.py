"""The storm: many clients arriving while the instances start, and what each one saw.

Every client uses the library's client helper (coordinator.client): it retries the
gate's clean rejections after their hint plus full jitter, and raises anything else,
1011 above all. A served client reads the welcome frame, gets its text echoed, stays a
moment, and leaves.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from websockets import ConnectionClosed

from coordinator.client import CONNECTED, Attempt, GaveUp, RetryPolicy, connect

SERVED = "served"
DEFAULT_POLICY = RetryPolicy(max_attempts=10, max_time=60.0, base_delay=0.25, max_delay=5.0)


@dataclass
class ClientResult:
    index: int
    outcome: str  # "served", "close 1011", "gave up", "error: ..."
    attempts: list[Attempt] = field(default_factory=list)
    instance: str | None = None  # from the welcome frame
    started_at: float | None = None  # wall clock when the handshake that got in started

    def held_for(self, ready_at: Mapping[str, float]) -> float | None:
        """How long the gate held the handshake that got in, None if it was not held.

        Held means the handshake started before its instance was ready: only the gate
        lets such a handshake through, and only once the instance is ready.
        """
        if self.outcome != SERVED or self.instance is None or self.started_at is None:
            return None
        ready = ready_at.get(self.instance)
        if ready is None or self.started_at >= ready:
            return None
        return self.attempts[-1].duration


class Storm:
    """``clients`` clients over ``spread`` seconds, round-robin over ``urls``."""

    def __init__(self, urls: Sequence[str], clients: int, spread: float, chat: float,
                 policy: RetryPolicy = DEFAULT_POLICY, echo_timeout: float = 10.0) -> None:
        self.urls = list(urls)
        self.echo_timeout = echo_timeout  # a server that accepts but never answers
        self.clients = clients
        self.spread = spread
        self.chat = chat
        self.policy = policy
        self.results: list[ClientResult] = []
        self.progress: Counter[str] = Counter()  # sent, connected, rejections, 1011, ...

    async def run(self) -> list[ClientResult]:
        starts = sorted(random.uniform(0, self.spread) for _ in range(self.clients))
        begin = time.monotonic()
        self.results = list(await asyncio.gather(
            *(self._client(i, self.urls[i % len(self.urls)], begin + at)
              for i, at in enumerate(starts))))
        return self.results

    async def _client(self, index: int, url: str, at: float) -> ClientResult:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        self.progress["sent"] += 1
        attempts: list[Attempt] = []

        def on_attempt(attempt: Attempt) -> None:
            attempts.append(attempt)
            if attempt.outcome == CONNECTED:
                self.progress["connected"] += 1
            elif attempt.retry_after is not None:
                self.progress["rejections"] += 1

        try:
            session = await connect(url, policy=self.policy, on_attempt=on_attempt)
            async with session:
                started_at = time.time() - session.held_for
                welcome = json.loads(session.first_message or "{}")
                instance = welcome.get("instance") if isinstance(welcome, dict) else None
                await session.websocket.send(f"hello from client {index}")
                async with asyncio.timeout(self.echo_timeout):
                    echo = json.loads(await session.websocket.recv())
                if not isinstance(echo, dict) or echo.get("text") != f"hello from client {index}":
                    return self._done(ClientResult(index, f"error: bad echo {echo}", attempts))
                await asyncio.sleep(self.chat)
            return self._done(ClientResult(index, SERVED, attempts, instance, started_at))
        except GaveUp:
            return self._done(ClientResult(index, "gave up", attempts))
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            return self._done(ClientResult(index, f"close {code}", attempts))
        except (OSError, ValueError, TimeoutError) as exc:
            return self._done(ClientResult(index, f"error: {exc!r}", attempts))

    def _done(self, result: ClientResult) -> ClientResult:
        self.progress["finished"] += 1
        self.progress[result.outcome] += 1
        return result

    def progress_line(self, elapsed: float) -> str:
        p = self.progress
        waiting = p["sent"] - p["connected"] - (p["finished"] - p[SERVED])
        return (f"t={elapsed:4.1f}s  clients sent {p['sent']}/{self.clients}  "
                f"connected {p['connected']}  waiting (held or retrying) {waiting}  "
                f"rejections so far {p['rejections']}  1011s {p['close 1011']}")


@dataclass
class Report:
    gate: bool
    clients: int
    handshakes: int
    admitted_at_once: int
    held_then_admitted: int
    rejections: int  # handshakes the gate refused with a retry hint (503 / 1013 / 1012)
    clients_rejected_then_served: int
    served: int
    closed_1011: int
    gave_up: int
    other_failures: dict[str, int]
    hold_p50: float | None
    hold_p99: float | None
    instance_counters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, gate: bool, results: Sequence[ClientResult], ready_at: Mapping[str, float],
              instance_counters: dict[str, Any] | None = None) -> Report:
        """``ready_at``: each instance's ready time (unix seconds), from the fleet view."""
        served = [r for r in results if r.outcome == SERVED]
        holds = sorted(h for r in served if (h := r.held_for(ready_at)) is not None)
        failures = Counter(r.outcome for r in results if r.outcome != SERVED)
        return cls(
            gate=gate,
            clients=len(results),
            handshakes=sum(len(r.attempts) for r in results),
            admitted_at_once=len(served) - len(holds),
            held_then_admitted=len(holds),
            rejections=sum(1 for r in results for a in r.attempts if a.retry_after is not None),
            clients_rejected_then_served=sum(1 for r in served if len(r.attempts) > 1),
            served=len(served),
            closed_1011=failures.pop("close 1011", 0),
            gave_up=failures.pop("gave up", 0),
            other_failures=dict(failures),
            hold_p50=percentile(holds, 50),
            hold_p99=percentile(holds, 99),
            instance_counters=instance_counters or {},
        )

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def render(self) -> str:
        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}s"

        title = "with the gate" if self.gate else "WITHOUT the gate (COORD_GATE=off)"
        lines = [
            f"report, {title}:",
            f"  connections tried          {self.clients} clients, {self.handshakes} handshakes",
            f"  admitted at once           {self.admitted_at_once}",
            f"  held, then admitted        {self.held_then_admitted}",
            (f"  rejected with retry hint   {self.rejections} handshakes (HTTP 503 Retry-After "
             f"/ 1013 / 1012); {self.clients_rejected_then_served} of those clients "
             "were served on a later try"),
            f"  served in the end          {self.served} of {self.clients}",
            f"  closed with 1011           {self.closed_1011}",
            f"  gave up (retry bounds)     {self.gave_up}",
            f"  hold time p50 / p99        {seconds(self.hold_p50)} / {seconds(self.hold_p99)}",
        ]
        for outcome, count in sorted(self.other_failures.items()):
            lines.append(f"  {outcome:<26} {count}")
        if self.instance_counters:
            lines.append("  the instances' own counters, as a cross-check:")
        for instance, counters in sorted(self.instance_counters.items()):
            lines.append(f"    {instance}: {counters}")
        return "\n".join(lines)


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence; None if it is empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]
