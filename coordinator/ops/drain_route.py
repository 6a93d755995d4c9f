"""The drain endpoint: ``POST /drain``, for a Kubernetes ``preStop`` hook or an operator.

    app.add_route("/drain", DrainApp(coord))  # on with COORD_DRAIN_TOKEN

(a route, not ``app.mount``: a mount answers ``POST /drain`` with a 307 redirect, which
no client follows for a POST).

Authenticated with a bearer token (``Authorization: Bearer <COORD_DRAIN_TOKEN>``); with
no token configured the endpoint is off (404, as if it were not there). A right token
starts the drain of every gated instance in this process (the same drain as SIGTERM's:
503 to newcomers for the grace, 1012 to open connections over its spread, the fleet
left) and answers when it is done, 200 with the health document. Answering only then is
what a ``preStop`` hook needs: the kubelet sends SIGTERM once the hook returns, so the
pod keeps listening (and turning newcomers away cleanly) until it has drained, and the
SIGTERM then finds nothing left (the server shuts down at once). A second request while
the drain runs waits for the same drain.

Missing credentials: 401 with ``WWW-Authenticate: Bearer``; a wrong token: 403; a method
other than POST: 405. Before the app's lifespan started (nothing attached to drain): 409.
"""

from __future__ import annotations

import hmac
import logging
import time

from coordinator._asgi import Receive, Scope, Send
from coordinator.instance.coordinator import Coordinator
from coordinator.instance.drain import DRAINS
from coordinator.ops.health import health_document, respond

log = logging.getLogger("coordinator.drain")
LOG_INTERVAL = 10.0  # seconds: refused requests are logged at most this often, counted


class DrainApp:
    """``POST`` drains ``coord``'s process and answers once drained (see the module).

    ``token``: the bearer token a request must carry; default ``COORD_DRAIN_TOKEN``
    (``coord.settings.drain_token``). None or empty: the endpoint is off (404).
    """

    def __init__(self, coord: Coordinator, token: str | None = None) -> None:
        self.coord = coord
        self.token = token if token is not None else coord.settings.drain_token
        self.refused = 0  # requests with a wrong token, since the start
        self._logged_at = -LOG_INTERVAL

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # a mounted app sees only http
        if not self.token:
            await respond(send, 404, {"error": "not found"}, scope)
            return
        if scope["method"] != "POST":
            await respond(send, 405, {"error": "method not allowed"}, scope,
                          [(b"allow", b"POST")])
            return
        given = _bearer(scope)
        if given is None:
            await respond(send, 401, {"error": "a bearer token is required"}, scope,
                          [(b"www-authenticate", b'Bearer realm="drain"')])
            return
        if not hmac.compare_digest(given, self.token.encode()):
            self.refused += 1
            now = time.monotonic()
            if now - self._logged_at >= LOG_INTERVAL:  # anyone reaching the port: bounded
                self._logged_at = now
                log.warning("drain endpoint: a request with a wrong token was refused (from "
                            "%s; %d refused so far)", _client(scope), self.refused)
            await respond(send, 403, {"error": "wrong token"}, scope)
            return
        if self.coord not in DRAINS.coordinators:
            await respond(send, 409, {"error": "the app's lifespan has not started: nothing "
                                      "to drain"}, scope)
            return
        log.info("drain endpoint: draining instance %s (asked by %s)", self.coord.id,
                 _client(scope))
        await DRAINS.drain_now()
        await respond(send, 200, health_document(self.coord), scope)


def _bearer(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            kind, _, token = bytes(value).strip().partition(b" ")
            if kind.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "an unknown client"
