"""A rolling deploy behind HAProxy, pacing on: the run of bench/rolling_deploy.py, small.

Three instances of the reference backend behind deploy/haproxy.cfg, 60 clients that stay
connected with the client helper (``coordinator.client.sessions``), each instance
restarted in turn (SIGTERM, its exit, a new process on its port, ready, back in
HAProxy) with the drain's 1012s spread over the last half of the grace (the default).
Counts only, never a time: the benchmark measures.
"""

from __future__ import annotations

import json

import pytest

from tests.support import Population, RollingFleet

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

CLIENTS = 60
GRACE = 3  # COORD_DRAIN_GRACE; COORD_DRAIN_SPREAD left at its default, half of it


async def test_every_client_stays_served_through_a_paced_rolling_deploy(tmp_path, redis_server,
                                                                         namespace):
    fleet = RollingFleet(redis_server.url, namespace, tmp_path,
                         {"COORD_DRAIN_GRACE": str(GRACE),
                          "BACKEND_PHASE_DURATIONS": "services=0.5"})
    population: Population | None = None
    try:
        await fleet.start()
        population = Population(fleet.url, CLIENTS)
        await population.connect(rate=100, timeout=30)
        restarts = [await fleet.restart(i) for i in range(fleet.size)]
        await population.all_chatting(30, "every client to chat again")
        finished = await population.finish(15)
    except BaseException:
        print(fleet.logs_of())
        raise
    finally:
        if population is not None:
            await population.stop()
        fleet.stop()

    assert [r.exit_code for r in restarts] == [0, 0, 0], fleet.logs_of()
    assert population.failed() == []
    outcomes = population.outcomes()
    assert outcomes["close 1011"] == 0 and outcomes["http 500"] == 0, outcomes
    # Every client chatted once more at the very end (its "final" was echoed).
    assert finished == CLIENTS
    # Each instance was restarted, so every client was disconnected at least once; every
    # disconnect was the drain's 1012 with the rejection JSON and a hint of a second or more.
    closes = list(population.closes())
    assert all(client.closes for client in population.clients)
    assert {c.code for c in closes} == {1012}, population.close_codes()
    for close in closes:
        reason = json.loads(close.reason)
        assert set(reason) == {"reason", "retry_after"}, close
        assert reason["reason"] == "draining", close
        assert isinstance(reason["retry_after"], int) and reason["retry_after"] >= 1, close
    # And each disconnect was followed by a connection that chatted again.
    reconnects = [v for v in population.visits() if v.after is not None]
    assert len(reconnects) == len(closes)
    assert all(v.served for v in reconnects)
