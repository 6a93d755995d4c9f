"""The dashboard over HTTP: the page, its static files and the event stream.

``dashboard_app`` is mounted at ``/dashboard`` by the backend (``mount_dashboard``) and by
the standalone server (``serve``, behind ``coordinator dashboard``), which needs only Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from coordinator._redis.client import make_redis
from coordinator.contract.keys import Keys
from coordinator.contract.phases import State
from coordinator.instance.coordinator import Change, Coordinator
from coordinator.ops.dashboard.feed import SNAPSHOT_INTERVAL, FleetFeed

PATH = "/dashboard"
RETRY_MS = 1000  # how soon a browser reconnects after the stream ends
FULL_RETRY_AFTER = 10  # seconds, for a page turned away because MAX_PAGES are open
# Nothing but this page's own files may load or run, whatever the fleet's data says.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
STREAM_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
                  (b"cache-control", b"no-store"), (b"x-accel-buffering", b"no")]


class EventStream:
    """``GET events``: one page's Server-Sent Events, until it leaves or the feed closes.

    Two tasks per page, both owned here and cancelled when either ends: one pumps the
    page's queue into the response, one waits for the client to disconnect.
    """

    def __init__(self, feed: FleetFeed) -> None:
        self.feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.feed.closed:
            await Response("shutting down", 503, {"retry-after": "1"})(scope, receive, send)
            return
        if self.feed.full:  # each open page costs a queue of up to 4 MB: bounded
            self.feed.turned_away += 1
            await Response(f"{self.feed.max_pages} dashboards are open already", 503,
                           {"retry-after": str(FULL_RETRY_AFTER)})(scope, receive, send)
            return
        async with self.feed.subscribe() as queue:
            await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
            await send({"type": "http.response.body", "more_body": True,
                        "body": f"retry: {RETRY_MS}\n\n".encode()})
            pump = asyncio.create_task(self._pump(queue, send), name="dashboard-pump")
            gone = asyncio.create_task(self._disconnected(receive), name="dashboard-listen")
            try:
                await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (pump, gone):
                    task.cancel()
                await asyncio.gather(pump, gone, return_exceptions=True)
            if pump.done() and not pump.cancelled() and pump.exception() is None:
                with contextlib.suppress(OSError):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _pump(queue: asyncio.Queue[bytes | None], send: Send) -> None:
        while (frame := await queue.get()) is not None:
            await send({"type": "http.response.body", "body": frame, "more_body": True})

    @staticmethod
    async def _disconnected(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass


def _page_html() -> str:
    return (resources.files(__package__) / "static" / "index.html").read_text("utf-8")


def dashboard_app(feed: FleetFeed) -> Starlette:
    """The page at ``/``, its files under ``/static``, its event stream at ``/events``."""
    html = _page_html()

    async def page(_request: Request) -> Response:
        return HTMLResponse(html, headers=SECURITY_HEADERS)

    return Starlette(routes=[
        Route("/", page),
        Route("/events", EventStream(feed)),
        Mount("/static", StaticFiles(packages=[(__package__, "static")])),
    ])


def mount_dashboard(api: Starlette, coord: Coordinator) -> FleetFeed:
    """Serve the dashboard from an instance at ``/dashboard``, reading Redis through its
    coordinator's client; its streams end when the instance starts draining."""
    feed = FleetFeed(coord.redis, coord.keys, signing_key=coord.settings.signing_key)

    def on_change(change: Change, changed: Coordinator) -> None:
        if change is Change.STATE and changed.state in (State.DRAINING, State.STOPPED):
            feed.close()

    coord.listeners.append(on_change)
    api.mount(PATH, dashboard_app(feed))
    return feed


def create_app(redis_url: str, namespace: str, *, signing_key: str | None = None,
               interval: float = SNAPSHOT_INTERVAL,
               redis_mode: str = "auto") -> tuple[Starlette, FleetFeed]:
    """The standalone dashboard: ``/`` redirects to ``/dashboard/``."""
    client = make_redis(redis_url, namespace=namespace, mode=redis_mode)
    feed = FleetFeed(client, Keys(namespace), signing_key=signing_key,
                     interval=interval)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            feed.close()
            await client.aclose()

    async def home(_request: Request) -> Response:
        return RedirectResponse(PATH + "/")

    app = Starlette(routes=[Route("/", home), Mount(PATH, dashboard_app(feed))],
                    lifespan=lifespan)
    return app, feed


class _DashboardServer(uvicorn.Server):
    """Ends the event streams first on shutdown, so that open pages do not hold it up."""

    def __init__(self, config: uvicorn.Config, feed: FleetFeed) -> None:
        super().__init__(config)
        self.feed = feed

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.feed.close()
        await super().shutdown(sockets)


def serve(redis_url: str, namespace: str, host: str = "127.0.0.1", port: int = 8080, *,
          signing_key: str | None = None, redis_mode: str = "auto",
          interval: float = SNAPSHOT_INTERVAL, log_level: str = "warning",
          sockets: list[socket.socket] | None = None, **uvicorn_options: Any) -> None:
    """Run the standalone dashboard until SIGINT or SIGTERM (on ``sockets`` when given:
    already bound, as ``coordinator dashboard`` binds before it announces the address)."""
    app, feed = create_app(redis_url, namespace, signing_key=signing_key,
                           interval=interval, redis_mode=redis_mode)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            lifespan="on", timeout_graceful_shutdown=2, **uvicorn_options)
    _DashboardServer(config, feed).run(sockets=sockets)
