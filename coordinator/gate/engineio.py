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
    """Whether the query carries a ``sid`` (a request of a session already open)."""
    query: bytes = scope.get("query_string", b"")
    return any(part.startswith(b"sid=") or part == b"sid" for part in query.split(b"&"))


def is_open(scope: Scope) -> bool:
    """An engine.io open, once the request is known to be on the Socket.IO path: no
    ``sid``, and for HTTP a ``GET`` (a CORS preflight or a stray ``POST`` opens nothing;
    engine.io answers it)."""
    if has_sid(scope):
        return False
    return scope["type"] == "websocket" or scope.get("method") == "GET"
