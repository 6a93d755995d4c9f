"""A startup phase that raises: held clients are rejected at once, none hangs, no 1011."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import (
    NEAR_READY_DURATIONS,
    assert_clean_rejection,
    backend_env,
    chat,
    counters,
    health,
    storm,
    tally,
    wait_for_phase,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

HELD = 20
MAX_QUEUE_TIME = 30  # a hold left to expire would take this long; "failed" must not wait


@pytest.mark.parametrize(("ws", "reject"), [
    ("websockets", "http"), ("websockets-sansio", "http"), ("wsproto", "http"),
    ("websockets-sansio", "close"),
])
async def test_failed_phase_rejects_held_clients_at_once(start_backend, redis_server,
                                                         namespace, ws, reject):
    env = backend_env(namespace=namespace, redis_url=redis_server.url, BACKEND_WS=ws,
                      COORD_REJECT=reject,
                      COORD_MAX_QUEUE_TIME=str(MAX_QUEUE_TIME), BACKEND_FAIL_PHASE="services",
                      BACKEND_PHASE_DURATIONS=f"{NEAR_READY_DURATIONS},services=3")
    backend = start_backend(env, wait=True)
    wait_for_phase(backend, ("cache", "services"))

    # Well inside COORD_MAX_QUEUE_TIME: only an immediate rejection finishes in time.
    outcomes = await asyncio.wait_for(storm(backend.ws_url, HELD), MAX_QUEUE_TIME / 3)

    assert tally(outcomes) == {f"{'http 503' if reject == 'http' else 'close 1013'} failed":
                               HELD}
    for outcome in outcomes:
        assert_clean_rejection(outcome, reject, "failed")
    status, body = health(backend)
    assert status == 503 and body["state"] == "failed", body
    assert counters(body) == {"admitted": {}, "rejected": {"failed": HELD}, "held_total": HELD,
                              "released_total": 0, "depth": 0}
    # A newcomer to the failed instance is turned away at once too; the process stays
    # up but tells the platform's liveness probe to replace it.
    assert_clean_rejection(await chat(backend.ws_url), reject, "failed")
    assert backend.get("/health/live") == (503, {"status": "failed",
                                                 "instance": env["COORD_INSTANCE_ID"]})
