"""Which requests open an engine.io session (Socket.IO's transport), read from the scope
alone: the gate holds those like WebSocket handshakes and lets every other request on the
Socket.IO path through untouched.

An engine.io client opens a session with a request on the Socket.IO path without a
``sid`` in its query: an HTTP ``GET`` (long-polling, what the npm ``socket.io-client``
and python-socketio's ``AsyncClient`` send first) or a WebSocket (``transport=websocket``,
a client that skips polling). Every later request of the session carries its ``sid``:
the polls, the posts, the upgrade to a WebSocket. The session lives in the process that
answered the open, so holding the open until the instance is ready is what keeps the
app's Socket.IO ``connect`` handler from running before it.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from coordinator._asgi import Scope

DEFAULT_PATH = "/socket.io"  # python-socketio's and socket.io-client's default ``path``


def prefix(path: str | None) -> str | None:
    """``path`` as the prefix a request's path is matched against: ``/socket.io/``
    (python-engineio's ASGIApp matches the same way); None or empty: no Socket.IO path."""
    if not path or not path.strip("/"):
        return None
    return "/" + path.strip("/") + "/"


def on_path(scope: Scope, path_prefix: str) -> bool:
    """Whether the request is on the Socket.IO path (``/socket.io`` and under it)."""
    path: str = scope.get("path", "")
    return path.startswith(path_prefix) or path + "/" == path_prefix


def has_sid(scope: Scope) -> bool:
    """Whether the query carries a ``sid`` with a value (a request of a session already
    open), read as engine.io reads it (``parse_qs``: ``sid=`` or a bare ``sid`` is no sid,
    and opens a session)."""
    query: bytes = scope.get("query_string", b"")
    return bool(parse_qs(query.decode("latin-1")).get("sid"))


def is_open(scope: Scope) -> bool:
    """An engine.io open, once the request is known to be on the Socket.IO path: no
    ``sid``, and for HTTP a ``GET`` without a body (a CORS preflight, a stray ``POST``
    or a GET that carries a body opens nothing the gate could hold: engine.io answers
    it)."""
    if has_sid(scope):
        return False
    if scope["type"] == "websocket":
        return True
    return scope.get("method") == "GET" and not _has_body(scope)


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length"
                                            and value.strip() not in (b"", b"0")):
            return True
    return False
