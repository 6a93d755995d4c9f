"""The drain endpoint, POST /drain, as a Kubernetes preStop hook calls it (deploy/
kubernetes.yaml: ``coordinator drain``, which carries COORD_DRAIN_TOKEN): refused without
the token (401) or with a wrong one (403), off with no token configured (404); with the
right one it drains the instance, the same drain as SIGTERM's (503 to newcomers through
the grace, 1012 to open connections, the fleet left), and answers once drained. The
SIGTERM the kubelet sends after the hook then finds nothing to drain: the server shuts
down at once, with status 0, and the drain ran once. Under the fallback's takeover
(``python -m backend``: uvicorn's handler, granian's on its loop) and under the public
entry point (DrainingServer)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
from websockets import ConnectionClosed
from websockets.asyncio.client import connect

from harness.processes import BACKEND_COMMAND
from tests.support import (
    HTTP,
    BackendProcess,
    RedisServer,
    async_wait_until,
    backend_env,
    chat,
    cli_env,
    run_cli,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

TOKEN = "preStop-token-5b1e9a7c"
GRACE = 2.0
SERVERS: dict[str, tuple[str, ...]] = {
    "python-m-backend": BACKEND_COMMAND,
    "uvicorn-draining-server": (sys.executable, "-m", "tests.e2e.entry_points", "uvicorn",
                                "{port}"),
    "granian": (str(Path(sys.executable).parent / "granian"), "--interface", "asgi",
                "--host", "127.0.0.1", "--port", "{port}", "backend.asgi:app"),
}


async def open_chat(url: str) -> asyncio.Task[tuple[int | None, Any]]:
    """An admitted connection left open; the task ends with the server's close."""
    ws = await connect(url, open_timeout=10)
    assert json.loads(await ws.recv())["type"] == "welcome"

    async def until_closed() -> tuple[int | None, Any]:
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            return (exc.rcvd.code, json.loads(exc.rcvd.reason)) if exc.rcvd else (None, None)

    return asyncio.create_task(until_closed())


def start(name: str, backends: list[BackendProcess], tmp_path: Path, redis_url: str,
          namespace: str, **extra: str) -> BackendProcess:
    env = backend_env(namespace=namespace, redis_url=redis_url, COORD_DRAIN_GRACE=str(GRACE),
                      COORD_ENVIRONMENT="test", BACKEND_PHASE_DURATIONS="services=0.1",
                      **extra)
    proc = BackendProcess(env, tmp_path / f"{name}.log", argv=SERVERS[name])
    backends.append(proc)
    return proc.start()


@pytest.mark.parametrize("name", list(SERVERS))
async def test_prestop_drains_through_the_endpoint_then_sigterm_ends_it_at_once(
        name: str, backends: list[BackendProcess], tmp_path: Path, redis_server: RedisServer,
        redis_text: redis.Redis, namespace: str) -> None:
    proc = start(name, backends, tmp_path, redis_server.url, namespace,
                 COORD_DRAIN_TOKEN=TOKEN)
    await asyncio.to_thread(proc.wait_ready)
    url = proc.http_url + "/drain"
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.post(url)).status_code == 401
        assert (await http.post(url)).headers["www-authenticate"].startswith("Bearer")
        assert (await http.post(url, headers={"Authorization": "Bearer wrong-token-123456"})
                ).status_code == 403
        assert (await http.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
                ).status_code == 405
    assert proc.get("/health/ready")[0] == 200  # none of that drained anything
    opened = [await open_chat(proc.ws_url) for _ in range(2)]

    # What the preStop hook runs: it returns once the instance has drained.
    env = cli_env(redis_server.url, namespace, COORD_DRAIN_TOKEN=TOKEN)
    hook = asyncio.create_task(asyncio.to_thread(run_cli, "drain", "--url", url, env=env))
    await async_wait_until(lambda: proc.get("/health/ready")[0] == 503, 5,
                           what="draining (ready answers 503)")
    fresh = await chat(proc.ws_url)
    assert fresh.kind == HTTP and fresh.status == 503 and fresh.rejection == "draining", fresh
    done = await asyncio.wait_for(hook, 15)
    assert done.returncode == 0, done.stderr
    assert f"instance {namespace}-i1 drained: stopped" in done.stdout
    for code, reason in await asyncio.wait_for(asyncio.gather(*opened), 5):
        assert code == 1012 and reason["reason"] == "draining"
    # Drained: gone from the fleet, still listening, ready 503 until the kubelet's SIGTERM.
    assert await redis_text.zscore(f"{{{namespace}}}:instances", f"{namespace}-i1") is None
    assert proc.get("/health/ready")[0] == 503
    later = await chat(proc.ws_url)
    assert later.kind == HTTP and later.status == 503, later

    code = await asyncio.to_thread(proc.wait_exit, signal.SIGTERM, 10)
    log = proc.log()
    assert log.count("draining: rejecting new handshakes") == 1, log[-3000:]  # once
    assert " 500" not in log and "1011" not in log and "Traceback" not in log, log[-3000:]
    if name != "granian":  # granian's main process ends its own way
        assert code == 0, log[-3000:]


async def test_with_no_token_configured_the_endpoint_is_off(
        backends: list[BackendProcess], tmp_path: Path, redis_server: RedisServer,
        namespace: str) -> None:
    proc = start("python-m-backend", backends, tmp_path, redis_server.url, namespace)
    await asyncio.to_thread(proc.wait_ready)
    async with httpx.AsyncClient(timeout=5) as http:
        answer = await http.post(proc.http_url + "/drain",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 404
    assert proc.get("/health/ready")[0] == 200
    done = await asyncio.to_thread(run_cli, "drain", "--url", proc.http_url + "/drain",
                                   env=cli_env(redis_server.url, namespace))
    assert done.returncode == 2 and "COORD_DRAIN_TOKEN is not set" in done.stderr
