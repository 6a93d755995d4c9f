"""python-engineio's sessions, ended as a dropped transport rather than closed.

An engine.io server's public ``disconnect(sid)`` sends the client a CLOSE packet: the npm
``socket.io-client`` then reconnects, but python-socketio's ``AsyncClient`` takes it as
final and stays disconnected. A drain wants every client back, on another instance: so
the session is ended as a server's own shutdown ends it, without the CLOSE packet. Its
socket is closed with ``abort=True`` (the app's ``disconnect`` handler runs, reason
``server disconnect``) and its send queue is woken with the end marker, so a pending
long-poll is answered (the next one finds no session: HTTP 400) and an upgraded
WebSocket is closed; both kinds of client then reconnect with their own backoff.

That takes three names the library does not document (``sockets``, a socket's
``close(abort=...)`` and ``queue``), checked against the versions below; outside them the
public ``disconnect`` is used, and the log says so once.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

log = logging.getLogger("coordinator.socketio")

TESTED = ((4, 11), (5, 0))  # python-engineio: from 4.11 (disconnect reasons), below 5
_checked: bool | None = None


def _version_ok() -> bool:
    global _checked
    if _checked is None:
        try:
            version = metadata.version("python-engineio")
            major, minor = (int(part) for part in version.split(".")[:2])
        except (metadata.PackageNotFoundError, ValueError):
            version, major, minor = "unknown", 0, 0
        _checked = TESTED[0] <= (major, minor) < TESTED[1]
        if not _checked:
            log.warning("python-engineio %s is outside the versions tested (%s to %s): a "
                        "drain ends Socket.IO sessions with engine.io's disconnect, which "
                        "python-socketio clients do not reconnect after", version,
                        ".".join(map(str, TESTED[0])), ".".join(map(str, TESTED[1])))
    return _checked


def session_ids(server: Any) -> list[str]:
    """The engine.io session ids open now on ``server`` (an engine.io AsyncServer)."""
    return list(server.sockets)


async def drop(server: Any, sid: str) -> None:
    """End session ``sid`` of ``server`` as a dropped transport (the module's docstring)."""
    if not _version_ok():
        await server.disconnect(sid)
        return
    socket = server.sockets.get(sid)
    if socket is None or socket.closed or socket.closing:
        return
    await socket.close(wait=False, abort=True, reason=server.reason.SERVER_DISCONNECT)
    socket.queue.put_nowait(None)  # the writer (poll or WebSocket) ends: an unbounded queue
