"""Shutdowns that are no signal: uvicorn's ``--limit-max-requests`` (and gunicorn's
``--max-requests``, which its uvicorn workers pass on as that limit) stop the server from
within. uvicorn's ``Server.shutdown`` then calls every connection's ``shutdown()`` at
once, before the lifespan's shutdown and with no signal to take over: a handshake still
held was answered with HTTP 500. The gate drains first now (docs/guide.md, Drain).

The reference app (``backend.asgi:app``) never becomes ready here (``services`` takes a
minute); three clients are held; HTTP requests (which alone count towards the limit; the
WebSocket handshakes do not) reach the limit; every held client must get the drain's 503
with ``Retry-After``, never a 500.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import redis.asyncio as redis

from tests.support import (
    HTTP,
    NEAR_READY_DURATIONS,
    BackendProcess,
    Outcome,
    RedisServer,
    async_wait_until,
    backend_env,
    chat,
    held_in_redis,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

HELD = 3
# BackendProcess.start's /health/live probe is one request; the rest are the test's own.
LIMIT = 4
UVICORN = (sys.executable, "-m", "uvicorn", "backend.asgi:app", "--host", "127.0.0.1",
           "--port", "{port}", "--limit-max-requests", str(LIMIT))
SERVERS: dict[str, tuple[str, ...]] = {
    "uvicorn": UVICORN,
    "uvicorn-wsproto": (*UVICORN, "--ws", "wsproto"),
    # The public entry point (coordinator.serve.DrainingServer): its shutdown drains first.
    "uvicorn-draining-server": (sys.executable, "-m", "tests.e2e.entry_points", "uvicorn",
                                "{port}", str(LIMIT)),
    "gunicorn": (str(Path(sys.executable).with_name("gunicorn")), "-k",
                 "uvicorn_worker.UvicornWorker", "-w", "1", "--max-requests", str(LIMIT),
                 "-b", "127.0.0.1:{port}", "backend.asgi:app"),
}


@pytest.mark.parametrize("name", list(SERVERS))
async def test_the_request_limit_drains_held_handshakes_first_never_a_500(
        name: str, backends: list[BackendProcess], tmp_path: Path, redis_server: RedisServer,
        redis_text: redis.Redis, namespace: str) -> None:
    env = backend_env(namespace=namespace, redis_url=redis_server.url, COORD_DRAIN_GRACE="1",
                      COORD_HEARTBEAT_INTERVAL="0.5", COORD_INSTANCE_TTL="3",
                      BACKEND_PHASE_DURATIONS=f"{NEAR_READY_DURATIONS},services=60")
    del env["COORD_INSTANCE_ID"]  # gunicorn's next worker is an instance of its own
    proc = BackendProcess(env, tmp_path / f"{name}.log", argv=SERVERS[name])
    backends.append(proc)  # killed after the test, with what gunicorn started next
    proc.start()
    clients = [asyncio.create_task(chat(proc.ws_url, open_timeout=30)) for _ in range(HELD)]

    async def all_held() -> bool:
        return await held_in_redis(redis_text, namespace) >= HELD

    await async_wait_until(all_held, 20, what="every client held")
    assert not any(c.done() for c in clients)

    def limit_reached() -> bool:
        proc.get("/health/live")  # each answered request counts towards the limit
        return any(c.done() for c in clients)

    await async_wait_until(limit_reached, 15, what="the request limit reached")
    outcomes: list[Outcome] = await asyncio.wait_for(asyncio.gather(*clients), 15)
    for outcome in outcomes:
        assert outcome.kind == HTTP and outcome.status == 503, outcome
        assert outcome.rejection == "draining", outcome
        assert int(outcome.retry_after or 0) >= 1, outcome
    if name.startswith("uvicorn"):
        # A limit reached is a normal end (status 0), not one killed by a handed-on SIGTERM.
        assert await asyncio.to_thread(proc.wait_exit, None, 15) == 0
    log = proc.log()
    assert " 500" not in log and "Traceback" not in log, log[-3000:]
    assert "Maximum request limit" in log, log[-3000:]
