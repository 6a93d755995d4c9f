"""A storm of real clients against a real uvicorn process while it starts.

The backend's `services` phase takes 3 s; 60 clients open during it. With the gate,
none sees 1011: the first 50 are held and chat once ready, the 10 beyond the local cap
get the clean rejection at once. Without the gate, the same storm produces 1011s.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support import (
    CHAT,
    IMPLEMENTATIONS,
    NEAR_READY_DURATIONS,
    assert_chatted,
    assert_clean_rejection,
    async_wait_until,
    backend_env,
    chat,
    counters,
    get,
    health,
    storm,
    tally,
    wait_for_phase,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

CLIENTS = 60
MAX_QUEUE = 50


@pytest.mark.parametrize("reject", ["http", "close"])
@pytest.mark.parametrize("ws", IMPLEMENTATIONS)
async def test_gate_holds_the_storm_and_rejects_beyond_the_cap_cleanly(
        start_backend, redis_server, namespace, ws, reject):
    env = backend_env(namespace=namespace, redis_url=redis_server.url, BACKEND_WS=ws,
                      COORD_REJECT=reject,
                      COORD_MAX_QUEUE=str(MAX_QUEUE),
                      BACKEND_PHASE_DURATIONS=f"{NEAR_READY_DURATIONS},services=3")
    backend = start_backend(env, wait=True)
    wait_for_phase(backend, ("cache", "services"))

    clients = [asyncio.create_task(chat(backend.ws_url, f"client {i}"))
               for i in range(CLIENTS)]
    # The rejections come at once: every client beyond the cap has its answer while the
    # instance still starts and holds the others.
    await async_wait_until(lambda: sum(c.done() for c in clients) >= CLIENTS - MAX_QUEUE, 15,
                           what="the clients beyond the cap to be answered")
    status, body = await get(backend, "/health/ready")
    assert (status, body["state"], body["queue"]["depth"]) == (503, "starting", MAX_QUEUE), body
    assert all(c.result().kind != CHAT for c in clients if c.done())
    outcomes = list(await asyncio.gather(*clients))

    counts = tally(outcomes)
    assert not any("1011" in k for k in counts), counts
    chatted = [o for o in outcomes if o.kind == CHAT]
    rejected = [o for o in outcomes if o.kind != CHAT]
    assert len(chatted) == MAX_QUEUE, counts
    assert len(rejected) == CLIENTS - MAX_QUEUE, counts
    for outcome in chatted:
        assert_chatted(outcome, env["COORD_INSTANCE_ID"])
    for outcome in rejected:
        assert_clean_rejection(outcome, reject, "queue_full")

    status, body = health(backend)
    assert status == 200 and body["state"] == "ready", body
    assert counters(body) == {"admitted": {"after_hold": MAX_QUEUE},
                              "rejected": {"queue_full": CLIENTS - MAX_QUEUE},
                              "held_total": MAX_QUEUE, "released_total": MAX_QUEUE,
                              "depth": 0}
    # A clean rejection is not an error: uvicorn's "returned without completing
    # handshake" ERROR after each denial response is filtered out by the gate.
    assert "ERROR" not in backend.log(), backend.log()[-2000:]


@pytest.mark.parametrize("ws", IMPLEMENTATIONS)
async def test_without_the_gate_the_same_storm_gets_1011(start_backend, redis_server,
                                                         namespace, ws):
    env = backend_env(namespace=namespace, redis_url=redis_server.url, BACKEND_WS=ws,
                      COORD_GATE="off",
                      BACKEND_PHASE_DURATIONS=f"{NEAR_READY_DURATIONS},services=2")
    backend = start_backend(env, wait=True)
    wait_for_phase(backend, ("cache", "services"))

    outcomes = await storm(backend.ws_url, CLIENTS)

    counts = tally(outcomes)
    assert counts["close 1011"] > 0, counts
    # Once ready the handler works: the 1011s were the startup race, nothing else.
    backend.wait_ready(timeout=15)
    assert_chatted(await chat(backend.ws_url, "after ready"), env["COORD_INSTANCE_ID"])
    _, body = health(backend)
    assert body["admitted"] == {} and body["rejected"] == {}, body  # the gate stayed out
