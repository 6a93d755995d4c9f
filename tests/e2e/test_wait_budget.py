"""A handshake that arrives in an earlier phase (before the near-ready window) is held
only for the wait budget, and rejected with ``timeout`` at the budget when the instance
is slower than the fleet expected (docs/guide.md, "What a client sees": "held up to the wait
budget"; `development`: 3 s). End to end: a real backend process, a real client.
"""

from __future__ import annotations

import pytest
import redis.asyncio as redis

from coordinator.settings import DEFAULT_PHASES, Settings
from tests.support import (
    assert_clean_rejection,
    async_wait_until,
    backend_env,
    chat,
    counters,
    health,
    wait_for_phase,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

ENVIRONMENT = "development"
# The hold is the behaviour, so its length is asserted against the budget: the client
# measures from before its TCP connect, so it can see no less than the budget (less
# EARLY for the clocks' granularity); SLACK covers the answer's way back and scheduling
# on a loaded 2-core CI machine, and is far below the 30 s a hold without a budget lasts.
EARLY = 0.05
SLACK = 1.0


async def test_an_early_hold_that_outlives_its_wait_budget_is_rejected_at_the_budget(
        start_backend, redis_server, namespace, client: redis.Redis) -> None:
    budget = Settings(environment=ENVIRONMENT).wait_budget("dependencies")
    assert budget < Settings().max_queue_time
    # What the fleet learned from earlier startups: ready moments after `dependencies`.
    await client.hset(f"{{{namespace}}}:phase_stats",
                      mapping=dict.fromkeys(DEFAULT_PHASES[:5], "0.01"))
    env = backend_env(namespace=namespace, redis_url=redis_server.url,
                      COORD_ENVIRONMENT=ENVIRONMENT,
                      BACKEND_PHASE_DURATIONS="init=0,dependencies=60")  # far slower
    backend = start_backend(env)
    instance = env["COORD_INSTANCE_ID"]
    wait_for_phase(backend, ("dependencies",))

    async def learned() -> bool:  # the instance read N:phase_stats: it has an estimate
        return bool(await client.hget(f"{{{namespace}}}:instance:{instance}",
                                      "expected_ready_at"))

    await async_wait_until(learned, 10, what="the instance to read N:phase_stats")

    outcome = await chat(backend.ws_url, open_timeout=30)

    assert_clean_rejection(outcome, "http", "timeout")
    assert budget - EARLY <= outcome.elapsed <= budget + SLACK, (outcome.elapsed, budget)
    status, body = health(backend)
    assert (status, body["state"], body["phase"]) == (503, "starting", "dependencies"), body
    assert counters(body) == {"admitted": {}, "rejected": {"timeout": 1}, "held_total": 1,
                              "released_total": 0, "depth": 0}
