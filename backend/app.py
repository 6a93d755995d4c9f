"""The reference FastAPI service: phased startup in the background, chat on ``/ws``.

The startup sequence runs after the server is listening, as a Cloud Run service must to
answer its probes, so a WebSocket can arrive before ``services`` has built what the chat
handler needs. Without the gate such a connection fails with 1011; with it, it is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response

from coordinator import ConnectionGate, Coordinator
from coordinator._redis.client import REDIS_ERRORS
from coordinator.fleet.view import FleetReader, SharedSnapshot
from coordinator.ops.dashboard import mount_dashboard
from coordinator.ops.drain_route import DrainApp
from coordinator.ops.health import HealthApp
from coordinator.ops.metrics import CONTENT_TYPE, Metrics

from .config import BackendConfig

log = logging.getLogger("backend")


@dataclass
class ChatServices:
    """What the `services` phase builds; the chat handler cannot work without it."""

    instance_id: str

    def welcome(self) -> dict[str, Any]:
        return {"type": "welcome", "instance": self.instance_id}

    def reply(self, text: str) -> dict[str, Any]:
        return {"type": "echo", "text": text, "instance": self.instance_id}


class Backend:
    """The service: its coordinator, its startup, its routes; ``api`` is the ASGI app,
    with the gate added as middleware (as a user's FastAPI service adds it)."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.coord = Coordinator(config.coord)
        self.services: ChatServices | None = None
        self.metrics = Metrics(self.coord)
        self.api = FastAPI(title="ws-coordinator backend", lifespan=self._lifespan)
        self.api.add_middleware(ConnectionGate, coordinator=self.coord)  # Metrics observes it
        self.api.state.backend = self
        self._startup: asyncio.Task[None] | None = None
        self._shared: SharedSnapshot | None = None
        self._routes()
        if config.ops_routes:  # BACKEND_OPS_ROUTES=off where clients reach the service
            self._ops_routes()
            mount_dashboard(self.api, self.coord)  # /dashboard/

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        await self.coord.start()
        self._startup = asyncio.create_task(self._run_startup(), name="backend-startup")
        try:
            yield
        finally:
            self._startup.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._startup
            if self._shared is not None:
                await self._shared.aclose()
            await self.coord.stop()

    async def _run_startup(self) -> None:
        await asyncio.sleep(0)  # let the server start listening first
        for name in self.config.coord.phases:
            try:
                async with self.coord.phase(name):
                    await asyncio.sleep(self.config.durations.get(name, 0.0))
                    if name == self.config.fail_phase:
                        raise RuntimeError(f"BACKEND_FAIL_PHASE={name}")
                    if name == self.config.coord.ready_phase:
                        self.services = ChatServices(self.coord.id)
            except Exception:
                return  # the coordinator has marked the instance failed and logged why
            log.info("phase %s done", name)

    def _routes(self) -> None:
        api, coord = self.api, self.coord

        @api.websocket("/ws")
        async def chat(websocket: WebSocket) -> None:
            await websocket.accept()
            services = self.services
            if services is None:
                # What every early connection hit before the gate existed. uvicorn drops
                # the TCP connection (1006) when a handler raises after accept; close
                # with 1011 first, as Starlette's WebSocketEndpoint does.
                await websocket.close(code=1011, reason="chat services are not built yet")
                raise RuntimeError("chat services are not built yet")
            await websocket.send_json(services.welcome())
            with contextlib.suppress(WebSocketDisconnect):
                while True:
                    text = await websocket.receive_text()
                    await websocket.send_json(services.reply(text))

        api.mount("/health", HealthApp(coord))
        # POST /drain with COORD_DRAIN_TOKEN (a preStop hook): off, 404, with no token. Not
        # an ops route: authenticated, and wanted where the public reaches the service.
        # (An ASGI app: Starlette's Route serves one as it is, its annotation names only
        # request handlers. Not a mount: a mount answers POST /drain with a redirect.)
        api.add_route("/drain", cast(Any, DrainApp(coord)), include_in_schema=False)

    def _ops_routes(self) -> None:
        """What operators read: the fleet, the metrics (and the dashboard, mounted apart)."""
        api, coord = self.api, self.coord
        # One read a second at most however many ask; none served stale while Redis is down.
        shared = self._shared = SharedSnapshot(FleetReader(coord.redis, coord.keys,
                                                           keyring=coord.keyring),
                                               usable=lambda: coord.redis_ok)

        @api.get("/fleet")
        async def fleet() -> JSONResponse:
            try:
                doc = await shared.get()
            except REDIS_ERRORS as exc:
                return JSONResponse({"error": f"redis unavailable: {type(exc).__name__}"},
                                    status_code=503)
            return JSONResponse(doc)

        @api.get("/metrics")
        async def metrics() -> Response:
            return Response(self.metrics.render(), media_type=CONTENT_TYPE)


def create_app(config: BackendConfig | None = None) -> FastAPI:
    """The reference service as an ASGI app (its :class:`Backend` is ``app.state.backend``)."""
    return Backend(config or BackendConfig.from_env()).api
