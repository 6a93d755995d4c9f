"""How long each uvicorn WebSocket implementation lets the gate hold a handshake.

uvicorn's legacy ``websockets`` implementation runs the handshake under websockets'
``open_timeout`` (10 s, not configurable through uvicorn) and drops the TCP connection
when it runs out: a hold longer than that never reaches ready. ``websockets-sansio`` and
``wsproto`` have no handshake timer, so only COORD_MAX_QUEUE_TIME bounds the hold. The
backend therefore caps COORD_MAX_QUEUE_TIME at 9 s when BACKEND_WS=websockets.

The four backends below start together and hold one client each in parallel, so the
module costs one ~13 s hold rather than four. The numbers are in docs/guide.md,
section "Handshake hold limits".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import (
    BackendProcess,
    assert_chatted,
    assert_clean_rejection,
    backend_env,
    chat,
    counters,
    wait_for_phase,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

LEGACY_OPEN_TIMEOUT = 10.0  # websockets.legacy.server.WebSocketServerProtocol's default
HOLD = 13.0  # the services phase: longer than the legacy limit, well inside 30 s
CAP_BELOW_LEGACY = 8  # an explicit COORD_MAX_QUEUE_TIME under the legacy impl
LEGACY_CAP = 9.0  # backend.config.LEGACY_WS_HOLD_CAP

SCENARIOS = {
    "websockets": {"BACKEND_WS": "websockets"},
    "websockets-capped": {"BACKEND_WS": "websockets",
                          "COORD_MAX_QUEUE_TIME": str(CAP_BELOW_LEGACY)},
    "websockets-sansio": {"BACKEND_WS": "websockets-sansio"},
    "wsproto": {"BACKEND_WS": "wsproto"},
}


@dataclass
class Held:
    backend: BackendProcess
    instance: str
    outcome: Any  # clients.Outcome
    status: int  # /health/ready, read the moment the client's handshake ended
    health: dict[str, Any]


async def _hold_one(backend: BackendProcess) -> tuple[Any, int, Any]:
    """Connect the moment ``services`` starts, so the hold lasts the whole phase."""
    await asyncio.to_thread(wait_until, lambda: backend.get("/health/live")[0] == 200, 20,
                            what="backend to listen")
    await asyncio.to_thread(wait_for_phase, backend, ("services",))
    outcome = await chat(backend.ws_url, "held", open_timeout=None)  # the client never gives up
    status, body = await asyncio.to_thread(backend.get, "/health/ready")
    return outcome, status, body


async def _hold_all(backends: list[BackendProcess]) -> list[tuple[Any, int, Any]]:
    return list(await asyncio.gather(*(_hold_one(b) for b in backends)))


@pytest.fixture(scope="module")
def held(redis_server, tmp_path_factory) -> Iterator[dict[str, Held]]:
    """One client held on each scenario's backend, all at once; what each one saw."""
    logs = tmp_path_factory.mktemp("hold-limits")
    backends: dict[str, BackendProcess] = {}
    try:
        for name, extra in SCENARIOS.items():
            namespace = f"t-hold-limits-{name}"
            env = backend_env(namespace=namespace, redis_url=redis_server.url,
                              COORD_ENVIRONMENT="test",
                              BACKEND_PHASE_DURATIONS=f"init=0,dependencies=0,database=0,"
                              f"cache=0,services={HOLD}", **extra)
            backends[name] = BackendProcess(env, logs / f"{name}.log").start(wait=False)
        # Own loop in a worker thread: the four holds run in parallel, apart from the
        # test's event loop.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            results = pool.submit(asyncio.run, _hold_all(list(backends.values()))).result(60)
        yield {name: Held(backend, backend.env["COORD_INSTANCE_ID"], *result)
               for (name, backend), result in zip(backends.items(), results, strict=True)}
    finally:
        for backend in backends.values():
            if backend.proc is not None and backend.proc.poll() is None:
                backend.kill()


def test_backend_caps_holds_below_the_legacy_open_timeout(held):
    # Uncapped, the legacy implementation drops the TCP connection at 10 s with no HTTP
    # response (docs/guide.md, "Handshake hold limits"); the backend caps
    # COORD_MAX_QUEUE_TIME at 9 s under it, so the held client gets a clean rejection
    # before that happens.
    seen = held["websockets"]
    assert_clean_rejection(seen.outcome, "http", "timeout")
    # The rejection is the cap's (9 s: never sooner, less 0.5 s for the client's and
    # the server's clocks and timers) and comes before the legacy 10 s drop (the promise).
    assert LEGACY_CAP - 0.5 <= seen.outcome.elapsed < LEGACY_OPEN_TIMEOUT, seen.outcome
    assert seen.status == 503 and seen.health["state"] == "starting", seen.health
    assert counters(seen.health)["rejected"] == {"timeout": 1}


def test_legacy_websockets_with_hold_capped_below_it_rejects_cleanly(held):
    seen = held["websockets-capped"]
    assert_clean_rejection(seen.outcome, "http", "timeout")
    assert seen.status == 503 and seen.health["state"] == "starting", seen.health
    assert counters(seen.health)["rejected"] == {"timeout": 1}


@pytest.mark.parametrize("ws", ["websockets-sansio", "wsproto"])
def test_sansio_and_wsproto_hold_past_the_legacy_limit(held, ws):
    seen = held[ws]
    assert_chatted(seen.outcome, seen.instance)
    # Held past the 10 s the legacy implementation allows: a lower bound (the client
    # connected as `services` began, so its hold lasted the phase's 13 s, less the poll).
    assert seen.outcome.elapsed > LEGACY_OPEN_TIMEOUT, seen.outcome
    assert seen.status == 200, seen.health
    assert counters(seen.health) == {"admitted": {"after_hold": 1}, "rejected": {},
                                     "held_total": 1, "released_total": 1, "depth": 0}
