"""The operator routes (/fleet, /metrics, /dashboard/) of a real backend: unreachable
through deploy/haproxy.cfg's public frontend (a real haproxy), and /fleet served from
one shared snapshot however many read it at once (Redis commands counted)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from tests.support import CHAT, HAProxy, RedisServer, chat, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

OPS_PATHS = ["/fleet", "/metrics", "/dashboard/", "/dashboard/events", "/%66leet",
             "/FLEET", "/fleet?pretty=1", "/Dashboard/static/dashboard.js", "/metrics/",
             "/drain", "/%64rain", "/DRAIN"]


def haproxy_for(backend: Any, tmp_path: Path, **extra: str) -> HAProxy:
    env = {f"BACKEND_{n}": f"127.0.0.1:{backend.port}" for n in (1, 2, 3)}
    env |= {"HAPROXY_BIND": f"127.0.0.1:{free_port()}",
            "HAPROXY_STATS_SOCKET": str(tmp_path / "haproxy.sock"), **extra}
    return HAProxy(env, tmp_path / "haproxy.log")


async def test_the_public_frontend_serves_chat_and_health_but_no_operator_route(
        redis_server: RedisServer, namespace: str, start_backend: Any, tmp_path: Path) -> None:
    backend = start_backend({"COORD_REDIS_URL": redis_server.url, "COORD_NAMESPACE": namespace,
                             "BACKEND_PHASE_DURATIONS": "services=0.1"})
    await asyncio.to_thread(backend.wait_ready)
    proxy = haproxy_for(backend, tmp_path)
    try:
        public = f"http://127.0.0.1:{proxy.port}"
        async with httpx.AsyncClient(timeout=5) as http:
            for path in OPS_PATHS:
                assert (await http.get(public + path)).status_code == 404, path
            for path in ("/fleet", "/metrics", "/dashboard/", "/%66leet"):  # served directly
                assert (await http.get(backend.http_url + path)).status_code == 200, path
            assert (await http.get(public + "/health/ready")).status_code == 200
        outcome = await chat(f"ws://127.0.0.1:{proxy.port}/ws")
        assert outcome.kind == CHAT
    finally:
        proxy.stop()


def half_sent_upgrade(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")  # never ends
    return sock


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    sock.settimeout(seconds)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return False, b""
    return True, data


async def test_a_half_sent_request_is_cut_by_haproxy_not_by_uvicorn(
        redis_server: RedisServer, namespace: str, start_backend: Any, tmp_path: Path) -> None:
    """What remains without a front end (docs/security.md): uvicorn waits for the rest
    of a request's headers for ever; HAProxy's ``timeout http-request`` answers 408."""
    backend = start_backend({"COORD_REDIS_URL": redis_server.url, "COORD_NAMESPACE": namespace,
                             "BACKEND_PHASE_DURATIONS": "services=0.1"})
    await asyncio.to_thread(backend.wait_ready)
    proxy = haproxy_for(backend, tmp_path, HAPROXY_HTTP_REQUEST_TIMEOUT="1s")
    direct, through = half_sent_upgrade(backend.port), half_sent_upgrade(proxy.port)
    try:
        started = time.monotonic()
        closed, data = await asyncio.to_thread(closed_within, through, 8)
        assert closed and data.startswith(b"HTTP/1.1 408"), data
        assert time.monotonic() - started < 5
        closed, _ = await asyncio.to_thread(closed_within, direct, 2)
        assert not closed  # still open: uvicorn has no such timeout
    finally:
        direct.close()
        through.close()
        proxy.stop()


async def test_fleet_is_one_shared_snapshot_however_many_read_it(
        own_redis: RedisServer, start_backend: Any) -> None:
    backend = start_backend({"COORD_REDIS_URL": own_redis.url, "COORD_NAMESPACE": "shared",
                             "BACKEND_PHASE_DURATIONS": "services=0.1"})
    await asyncio.to_thread(backend.wait_ready)
    admin = redis.Redis.from_url(own_redis.url, decode_responses=True)

    async def index_reads() -> int:  # READ_INDEX runs ZREVRANGE twice per snapshot
        stats = await admin.info("commandstats")
        return int(stats.get("cmdstat_zrevrange", {}).get("calls", 0)) // 2

    try:
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=64)) as http:
            before = await index_reads()
            started = time.monotonic()
            answers = await asyncio.gather(*(http.get(backend.http_url + "/fleet")
                                             for _ in range(64)))
            took = time.monotonic() - started
            assert [a.status_code for a in answers] == [200] * 64
            assert {a.json()["generated_at"] for a in answers} <= {answers[0].json()[
                "generated_at"], answers[-1].json()["generated_at"]}
            reads = await index_reads() - before
            assert 1 <= reads <= 1 + int(took) + 1, (reads, took)  # one per second at most
            assert answers[0].json()["instances"][0]["id"] == backend.env.get(
                "COORD_INSTANCE_ID", answers[0].json()["instances"][0]["id"])
    finally:
        await admin.aclose()


async def test_a_websocket_message_over_the_launchers_limit_closes_with_1009(
        redis_server: RedisServer, namespace: str, start_backend: Any) -> None:
    """uvicorn's own limit is 16 MiB a message; the launcher sets BACKEND_WS_MAX_SIZE."""
    from websockets import ConnectionClosed
    from websockets.asyncio.client import connect
    backend = start_backend({"COORD_REDIS_URL": redis_server.url, "COORD_NAMESPACE": namespace,
                             "BACKEND_PHASE_DURATIONS": "services=0.1",
                             "BACKEND_WS_MAX_SIZE": "2048"})
    await asyncio.to_thread(backend.wait_ready)
    async with connect(backend.ws_url) as ws:
        await ws.recv()  # the welcome
        await ws.send("x" * 1000)
        assert "x" * 1000 in await ws.recv()
        await ws.send("x" * 10_000)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
