"""The server the benchmarks measure: one uvicorn process, one route per side of a
comparison, so that the gate and its baseline share the process, the server and the app.

WebSocket routes (every one ends in the same echo app):
  /gated  the echo app behind ConnectionGate
  /bare   the echo app alone
  /park   a bare app that takes the handshake and waits, never accepting (memory baseline)
  /poll   the seed's approach: each connection polls the instance's state in Redis at
          50 ms growing to 1 s, then accepts (release-latency baseline)
HTTP control routes:
  GET  /bench/status    state, phase, held, parked, polling, admitted, rejected, pid,
                        cpu (this process's CPU seconds)
  POST /bench/complete  (BENCH_START=hold) complete the ready phase; answers its time
  POST /bench/restart   (owner) a new incarnation, started up to the ready phase

Environment: the COORD_* variables, HOST, PORT, BENCH_ROLE (owner or follower),
BENCH_START (ready: run every phase at once; hold: stop inside the ready phase until
/bench/complete), BENCH_PARSER (hiredis or python: the reply parser of the coordinator's
client, bench/parser.py; its subscription keeps coordinator._redis.pubsub's parser whatever this
says; unset: redis-py's default).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import MutableMapping
from typing import Any

import uvicorn

from coordinator import ConnectionGate, Coordinator, Settings
from coordinator._redis.client import REDIS_ERRORS, make_redis
from coordinator.instance.status import progressive_intervals

from ._support import use_parser

Scope = MutableMapping[str, Any]
LATER_PHASE_SECONDS = 0.05


async def echo(scope: Scope, receive: Any, send: Any) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        await send({"type": "websocket.send", "text": message.get("text"),
                    "bytes": message.get("bytes")})


class Incarnation:
    """One life of the instance: its coordinator, its gate and (owner) its startup."""

    def __init__(self, settings: Settings, role: str, hold: bool) -> None:
        self.coord = Coordinator(settings, role=role)
        if parser := os.environ.get("BENCH_PARSER"):
            use_parser(self.coord.redis, parser)  # before coord.start(): no connection yet
        self.gate = ConnectionGate(echo, self.coord)
        self.hold = hold
        self.release = asyncio.Event()
        self.completed = asyncio.get_running_loop().create_future()
        self.ready_seen_at: float | None = None  # when this process last learnt it was ready
        self.coord.listeners.append(self._on_change)
        self._startup: asyncio.Task[None] | None = None

    def _on_change(self, what: str, coord: Coordinator) -> None:
        if what == "state" and coord.is_ready:
            self.ready_seen_at = time.time()

    async def begin(self) -> None:
        await self.coord.start()
        if self.coord.role == "owner":
            self._startup = asyncio.create_task(self._run_phases())

    async def _run_phases(self) -> None:
        plan = self.coord.plan
        for name in plan.phases:
            async with self.coord.phase(name):
                if name == plan.ready_phase and self.hold:
                    await self.release.wait()
                    at = time.time()
                elif self.hold and plan.index(name) > plan.ready_index:  # type: ignore[operator]
                    # Later phases take a while, as the reference backend's do; were they
                    # instant, their publishing would compete with the release it times.
                    await asyncio.sleep(LATER_PHASE_SECONDS)
            if name == plan.ready_phase and self.hold:
                self.completed.set_result(at)

    async def complete(self) -> float:
        self.release.set()
        return await self.completed

    async def end(self) -> None:
        if self._startup is not None:
            self._startup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._startup
        if not self.completed.done():
            self.completed.cancel()
        await self.coord.stop()


class BenchApp:
    def __init__(self) -> None:
        self.settings = Settings.from_env()
        self.role = os.environ.get("BENCH_ROLE", "owner")
        self.hold = os.environ.get("BENCH_START", "ready") == "hold"
        self.life: Incarnation | None = None
        self.redis = make_redis(self.settings.redis_url)
        self.parked = 0
        self.polling = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "websocket":
            path = scope["path"]
            if path == "/gated":
                assert self.life is not None
                await self.life.gate(scope, receive, send)
            elif path == "/bare":
                await echo(scope, receive, send)
            elif path == "/park":
                await self._park(receive)
            elif path == "/poll":
                await self._poll_then_echo(scope, receive, send)
        elif kind == "http":
            await self._control(scope, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self._new_life()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.life is not None:
                    await self.life.end()
                await self.redis.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _new_life(self) -> None:
        if self.life is not None:
            await self.life.end()
        self.life = Incarnation(self.settings, self.role, self.hold)
        await self.life.begin()

    async def _park(self, receive: Any) -> None:
        await receive()  # websocket.connect
        self.parked += 1
        try:
            await receive()  # only a websocket.disconnect can come before an accept
        finally:
            self.parked -= 1

    async def _poll_then_echo(self, scope: Scope, receive: Any, send: Any) -> None:
        key = self.life.coord.keys.instance(self.settings.instance_id)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.settings.max_queue_time
        self.polling += 1
        try:
            for interval in progressive_intervals():
                await asyncio.sleep(interval)
                with contextlib.suppress(*REDIS_ERRORS):
                    if await self.redis.hget(key, "state") == b"ready":
                        break
                if time.monotonic() > deadline:
                    return
        finally:
            self.polling -= 1
        await echo(scope, receive, send)

    async def _control(self, scope: Scope, send: Any) -> None:
        path, method = scope["path"], scope["method"]
        assert self.life is not None
        if path == "/bench/status":
            coord, gate = self.life.coord, self.life.gate.state
            body: Any = {"state": coord.state.value, "phase": coord.current_phase,
                         "held": len(gate.queue), "parked": self.parked,
                         "polling": self.polling, "admitted": dict(gate.admitted),
                         "rejected": dict(gate.rejected), "pid": os.getpid(),
                         "redis": coord.redis_ok, "ready_seen_at": self.life.ready_seen_at,
                         "cpu": time.process_time()}
        elif path == "/bench/complete" and method == "POST":
            body = {"completed_at": await self.life.complete()}
        elif path == "/bench/restart" and method == "POST":
            await self._new_life()
            body = {"ok": True}
        else:
            await _respond(send, 404, {"error": "not found"})
            return
        await _respond(send, 200, body)


async def _respond(send: Any, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def main() -> None:
    uvicorn.run(BenchApp(), host=os.environ.get("HOST", "127.0.0.1"),
                port=int(os.environ["PORT"]), log_level="warning", access_log=False,
                lifespan="on", timeout_graceful_shutdown=2, backlog=4096)


if __name__ == "__main__":
    main()
