"""The client helper against real servers that refuse the way the gate does.

A scripted ASGI app under a real uvicorn (tests/integration/scripted.py) answers each
handshake as its script says: the gate's own rejection, a load balancer's bare 503, a
1011, a hold, or a chat. The last test uses the real backend with its gate while it
starts.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time

import pytest
from tenacity import RetryCallState
from websockets import ConnectionClosedError
from websockets.asyncio.client import ClientConnection

from coordinator.client import Attempt, GaveUp, RetryPolicy, _delay, _Refused, connect
from tests.support import health, wait_for_phase
from tests.integration.scripted import Scripted, serving
from tests.support import async_wait_until, free_port

FAST = dict(base_delay=0.05, max_delay=0.2)


async def test_retries_503_1013_and_1012_after_the_servers_hint():
    app = Scripted(("gate", "starting", 1, "http"), ("gate", "queue_full", 1, "close"),
                   ("gate", "draining", 1, "close"))
    async with serving(app) as url, connect(url, policy=RetryPolicy(**FAST)) as session:
        assert json.loads(session.first_message) == {"type": "welcome"}
        await session.websocket.send("still open")

    assert [(a.outcome, a.reason, a.retry_after) for a in session.attempts] == [
        ("http 503", "starting", 1.0), ("close 1013", "queue_full", 1.0),
        ("close 1012", "draining", 1.0), ("connected", None, None)]
    gaps = [b - a for a, b in zip(app.arrivals, app.arrivals[1:], strict=False)]
    assert len(gaps) == 3 and min(gaps) >= 1.0, gaps  # never sooner than Retry-After


async def test_a_held_handshake_is_one_attempt_that_lasts_the_hold():
    app = Scripted(("hold", 1.2))
    async with serving(app) as url:
        session = await connect(url, policy=RetryPolicy(**FAST))
        await session.close()
    assert [a.outcome for a in session.attempts] == ["connected"]
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
    assert elapsed < policy.max_time, elapsed


async def test_a_held_handshake_is_cut_at_max_time():
    app = Scripted(("hold", 5))
    async with serving(app) as url:
        with pytest.raises(GaveUp) as info:
            await connect(url, policy=RetryPolicy(max_attempts=5, max_time=0.5, **FAST))
    assert [a.outcome for a in info.value.attempts] == ["timeout"]


async def test_connection_refused_is_retried_until_the_server_is_up():
    port = free_port()
    app = Scripted()
    seen: list[Attempt] = []
    policy = RetryPolicy(max_attempts=50, max_time=20, base_delay=0.05, max_delay=0.1)
    client = asyncio.ensure_future(connect(f"ws://127.0.0.1:{port}/ws", policy=policy,
                                           on_attempt=seen.append))
    await async_wait_until(lambda: len(seen) >= 2, 10, what="two refused attempts")
    async with serving(app, port):
        session = await client
        await session.close()
    outcomes = [a.outcome for a in session.attempts]
    assert outcomes[-1] == "connected" and set(outcomes[:-1]) == {"refused"}, outcomes


def test_full_jitter_stays_in_a_doubling_window_and_spreads():
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)
    for attempt, window in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        samples = [policy.jitter(attempt) for _ in range(400)]
        assert min(samples) >= 0 and max(samples) <= window
        assert statistics.pstdev(samples) > window / 5  # spread, not a fixed delay


def test_the_servers_hint_is_a_floor_under_the_jitter():
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)
    state = RetryCallState(None, None, (), {})
    state.attempt_number = 3
    state.set_exception((_Refused, _Refused(Attempt(3, "http 503", 0.0, 2.0)), None))
    delays = [_delay(policy, state) for _ in range(200)]
    assert min(delays) >= 2.0 and max(delays) <= 2.0 + 2.0


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"max_time": 0},
                                    {"base_delay": -1}, {"first_message_timeout": 0}])
def test_policy_rejects_bad_bounds(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


@pytest.mark.redis
@pytest.mark.e2e
async def test_against_the_real_gate_while_the_backend_starts(start_backend, redis_server,
                                                              namespace):
    env = {"COORD_REDIS_URL": redis_server.url, "COORD_NAMESPACE": namespace,
           "COORD_INSTANCE_ID": f"{namespace}-i1", "COORD_REJECT": "close",
           "BACKEND_PHASE_DURATIONS": "init=0,dependencies=1.5,database=0,cache=0,services=1"}
    backend = start_backend(env)
    wait_for_phase(backend, ("dependencies",))

    session = await connect(backend.ws_url, policy=RetryPolicy(max_time=30, **FAST))
    async with session:
        assert json.loads(session.first_message) == {"type": "welcome",
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


async def test_cancelled_while_waiting_for_the_first_frame_closes_the_connection():
    app = Scripted(("silent",))
    receiving = asyncio.Event()

    class Watched(ClientConnection):
        async def recv(self, *args, **kwargs):  # type: ignore[override]
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
    assert elapsed < policy.first_message_timeout / 2, elapsed


async def test_every_address_of_a_dual_stack_host_refusing_is_retried(monkeypatch):
    """asyncio reports one OSError("Multiple exceptions: ...") when all of a host's
    addresses refuse; that is as retryable as a single refusal."""
    port = free_port()
    resolve = socket.getaddrinfo

    def dual_stack(host, *args, **kwargs):
        if host != "dual-stack.test":
            return resolve(host, *args, **kwargs)
        return [*resolve("::1", port, socket.AF_INET6, socket.SOCK_STREAM),
                *resolve("127.0.0.1", port, socket.AF_INET, socket.SOCK_STREAM)]

    monkeypatch.setattr(socket, "getaddrinfo", dual_stack)
    with pytest.raises(GaveUp) as info:
        await connect(f"ws://dual-stack.test:{port}/ws", policy=RetryPolicy(max_attempts=2, **FAST))
    assert [a.outcome for a in info.value.attempts] == ["unreachable"] * 2
    assert "Multiple exceptions" in str(info.value.last)


async def test_a_host_name_that_does_not_resolve_is_not_retried():
    seen: list[Attempt] = []
    with pytest.raises(socket.gaierror):
        await connect("ws://no-such-host.invalid/ws", policy=RetryPolicy(**FAST),
                      on_attempt=seen.append)
    assert [a.outcome for a in seen] == ["error gaierror"]
