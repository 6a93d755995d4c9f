"""The client helper against real servers that refuse the way the gate does.

A scripted ASGI app under a real uvicorn (``tests.support.Scripted``) answers each
handshake as its script says: the gate's own rejection, a load balancer's bare 503, a
1011, a hold, or a chat. The last test uses the real backend with its gate while it
starts. (tests/integration/test_client.py: network faults, with no web server.)
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from websockets import ConnectionClosedError
from websockets.asyncio.client import ClientConnection

from coordinator.client import Attempt, GaveUp, RetryPolicy, connect
from tests.support import (
    Scripted,
    async_wait_until,
    backend_env,
    health,
    serving,
    wait_for_phase,
)

pytestmark = pytest.mark.e2e

FAST: dict[str, Any] = {"base_delay": 0.05, "max_delay": 0.2}
# max_time is the helper's promise: no attempt runs past it. The test's clock starts
# before the helper's and stops after GaveUp is raised; this much covers that and the
# event loop's scheduling on a loaded 2-core CI machine.
MAX_TIME_SLACK = 0.25


async def test_retries_503_1013_and_1012_after_the_servers_hint():
    app = Scripted(("gate", "starting", 1, "http"), ("gate", "queue_full", 1, "close"),
                   ("gate", "draining", 1, "close"))
    async with serving(app) as url, connect(url, policy=RetryPolicy(**FAST)) as session:
        assert json.loads(session.first_message or "") == {"type": "welcome"}
        await session.websocket.send("still open")

    assert [(a.outcome, a.reason, a.retry_after) for a in session.attempts] == [
        ("http 503", "starting", 1.0), ("close 1013", "queue_full", 1.0),
        ("close 1012", "draining", 1.0), ("connected", None, None)]
    gaps = [b - a for a, b in zip(app.arrivals, app.arrivals[1:], strict=False)]
    # Never sooner than Retry-After (1 s): a floor, which load can only make longer.
    assert len(gaps) == 3 and min(gaps) >= 1.0, gaps


async def test_a_held_handshake_is_one_attempt_that_lasts_the_hold():
    app = Scripted(("hold", 1.2))
    async with serving(app) as url:
        session = await connect(url, policy=RetryPolicy(**FAST))
        await session.close()
    assert [a.outcome for a in session.attempts] == ["connected"]
    # One handshake, lasting the whole hold: the server accepted after 1.2 s.
    assert session.held_for >= 1.2 and len(app.arrivals) == 1


async def test_1011_is_raised_at_once_not_retried():
    app = Scripted(("close", 1011))
    seen: list[Attempt] = []
    async with serving(app) as url:
        with pytest.raises(ConnectionClosedError) as info:
            await connect(url, policy=RetryPolicy(**FAST), on_attempt=seen.append)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1011
    assert len(app.arrivals) == 1 and [a.outcome for a in seen] == ["close 1011"]


async def test_gives_up_after_max_attempts():
    app = Scripted(*[("bare503",)] * 10)
    seen: list[Attempt] = []
    async with serving(app) as url:
        with pytest.raises(GaveUp) as info:
            await connect(url, policy=RetryPolicy(max_attempts=4, **FAST), on_attempt=seen.append)
    assert [a.outcome for a in info.value.attempts] == ["http 503"] * 4
    assert seen == info.value.attempts and len(app.arrivals) == 4
    assert "after 4 attempt(s)" in str(info.value)


async def test_gives_up_within_max_time_whatever_the_attempt_budget():
    app = Scripted(*[("gate", "starting", 1, "http")] * 20)
    policy = RetryPolicy(max_attempts=100, max_time=2.5, **FAST)
    async with serving(app) as url:
        started = time.monotonic()
        with pytest.raises(GaveUp) as info:
            await connect(url, policy=policy)
        elapsed = time.monotonic() - started
    # Each retry waits >= 1 s (the hint), so at most three attempts fit in 2.5 s, and
    # no attempt starts once the next wait would cross the bound.
    assert 2 <= len(info.value.attempts) <= 3, info.value.attempts
    assert elapsed < policy.max_time + MAX_TIME_SLACK, elapsed


async def test_a_held_handshake_is_cut_at_max_time():
    app = Scripted(("hold", 2))  # far past max_time (the server ends it when it ends)
    async with serving(app) as url:
        with pytest.raises(GaveUp) as info:
            await connect(url, policy=RetryPolicy(max_attempts=5, max_time=0.5, **FAST))
    assert [a.outcome for a in info.value.attempts] == ["timeout"]


async def test_cancelled_while_waiting_for_the_first_frame_closes_the_connection():
    app = Scripted(("silent",))
    receiving = asyncio.Event()

    class Watched(ClientConnection):
        async def recv(self, *args, **kwargs):
            receiving.set()
            return await super().recv(*args, **kwargs)

    async with serving(app) as url:
        client = asyncio.ensure_future(connect(url, policy=RetryPolicy(**FAST),
                                               create_connection=Watched))
        async with asyncio.timeout(10):
            await receiving.wait()
        client.cancel()
        with pytest.raises(asyncio.CancelledError):
            await client
        await async_wait_until(lambda: app.disconnects == 1, 10,
                               what="the server to see the connection closed")


async def test_a_silent_server_is_cut_at_max_time_not_the_first_message_timeout():
    app = Scripted(("silent",))
    policy = RetryPolicy(max_attempts=1, max_time=0.5, first_message_timeout=60, **FAST)
    async with serving(app) as url:
        started = time.monotonic()
        with pytest.raises(GaveUp) as info:
            await connect(url, policy=policy)
        elapsed = time.monotonic() - started
    assert [a.outcome for a in info.value.attempts] == ["timeout"]
    assert elapsed < policy.max_time + MAX_TIME_SLACK, elapsed  # not the 60 s one


@pytest.mark.redis
async def test_against_the_real_gate_while_the_backend_starts(start_backend, redis_server,
                                                              namespace):
    env = backend_env(redis_url=redis_server.url, namespace=namespace, COORD_REJECT="close",
                      BACKEND_PHASE_DURATIONS="init=0,dependencies=1.5,database=0,cache=0,"
                                              "services=1")
    backend = start_backend(env)
    wait_for_phase(backend, ("dependencies",))

    session = await connect(backend.ws_url, policy=RetryPolicy(max_time=30, **FAST))
    async with session:
        assert json.loads(session.first_message or "") == {"type": "welcome",
                                                     "instance": env["COORD_INSTANCE_ID"]}
        await session.websocket.send("hello")
        assert json.loads(await session.websocket.recv())["text"] == "hello"

    first, last = session.attempts[0], session.attempts[-1]
    # Too early to hold (no statistics say it will be ready within the wait budget):
    # refused with 1013 and a hint, then retried, held and admitted.
    assert (first.outcome, first.reason) == ("close 1013", "starting"), session.attempts
    assert first.retry_after is not None and first.retry_after >= 1
    assert last.outcome == "connected"
    _, body = health(backend)
    assert body["rejected"].get("starting", 0) >= 1 and sum(body["admitted"].values()) == 1
