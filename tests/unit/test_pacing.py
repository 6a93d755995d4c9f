"""Deploy storms, without Redis: spread retry hints, slow start on a ready instance, the
local token bucket, and connections closed at their maximum age."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from typing import Any

from coordinator.contract.outcomes import Admitted
from coordinator.contract.rejection import Reason
from coordinator.gate.admission import spread
from coordinator.gate.pacing import Bucket
from tests.support import FakeWebSocket, gate_for, handshake, run_phases

DEADLINE = 10.0
BEFORE_READY = ("init", "dependencies", "database", "cache")


def test_a_hint_gets_a_spread_of_its_own_never_below_it_or_above_the_cap() -> None:
    rng = random.Random(7)
    for base in (1, 2, 4, 9, 18):
        seen = Counter(spread(base, cap=30, rng=rng) for _ in range(2000))
        assert min(seen) == base  # never sooner than the fleet's knowledge allows
        assert max(seen) == base + max(1, base // 2)  # the whole window is used
    # 27 clients refused in the same moment with a hint of 4 s (the measurement):
    # they no longer all come back in the same second.
    hints = Counter(spread(4, rng=rng) for _ in range(27))
    assert max(hints.values()) < 27 and set(hints) <= {4, 5, 6}
    # At the cap (a long startup, absurd statistics), the spread goes below it: hints
    # there do not all land on the cap's second either.
    for base in (25, 30, 50):
        seen = Counter(spread(base, cap=30, rng=rng) for _ in range(2000))
        assert max(seen) == 30 and min(seen) == min(base, 27) and len(seen) > 1


def test_the_bucket_grants_at_its_rate_and_says_when_the_next_token_comes() -> None:
    now = [0.0]
    bucket = Bucket(burst=3, clock=lambda: now[0])
    assert bucket.take(5, rate=2.0) == (3, 0.5)  # the burst; the next token in 1/rate s
    now[0] += 1.0
    assert bucket.take(5, rate=2.0)[0] == 2  # two tokens a second
    assert bucket.take(5, rate=2.0)[0] == 0  # spent: none until time passes
    assert bucket.take(5, rate=None) == (5, 0.0)  # no rate: no limit


class OpenApp:
    """Accepts, then stays open until the client leaves; records the order of arrival."""

    def __init__(self) -> None:
        self.accepted: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        self.accepted.append(scope["path"])
        while (await receive())["type"] != "websocket.disconnect":
            pass


async def test_slow_start_releases_the_held_ones_in_order_at_a_ramp_not_all_at_once() -> None:
    gate, coord, _app = gate_for(slowstart=2.0, max_queue=20)  # 10/s, doubling every 0.2 s
    app = OpenApp()
    gate.app = app
    clients = []
    await run_phases(coord, *BEFORE_READY)
    async with coord.phase("services"):
        for n in range(12):
            client = FakeWebSocket()
            client.scope["path"] = f"/ws/{n}"
            clients.append(client)
            handshake(gate, client)
            await asyncio.sleep(0)
        await asyncio.wait_for(_until(lambda: len(gate.state.queue) == 12), DEADLINE)
    await asyncio.sleep(0)  # one turn of the loop after ready
    assert len(app.accepted) <= 2  # without slow start: all 12 here
    await asyncio.wait_for(_until(lambda: len(app.accepted) == 12), DEADLINE)
    assert app.accepted == [f"/ws/{n}" for n in range(12)]  # first in, first out
    assert gate.state.admitted[Admitted.AFTER_HOLD] == 12 and gate.pacer.paced == 12
    for client in clients:
        client.disconnect()


async def test_a_connection_closes_at_its_maximum_age_with_1012_and_a_hint() -> None:
    gate, coord, _app = gate_for()
    gate.app = OpenApp()
    gate.state.connections.max_age = 0.2  # the setting's floor is 10 s; the mechanism is the same
    await run_phases(coord, *BEFORE_READY, "services")
    client = FakeWebSocket()
    task = handshake(gate, client)
    await asyncio.wait_for(_until(lambda: client.types[-1:] == ["websocket.close"]), DEADLINE)
    close = client.sent[-1]
    reason = json.loads(close["reason"])
    assert close["code"] == 1012 and reason["reason"] == "max_age"
    assert reason["retry_after"] in (1, 2)  # healthy instance: come back soon, spread
    assert gate.state.rejected[Reason.MAX_AGE] == 1 and not gate.state.connections
    await asyncio.wait_for(task, DEADLINE)


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.005)
