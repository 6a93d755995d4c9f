"""Socket.IO services behind the gate: the sessions a drain ends.

The gate holds engine.io opens on its ``socketio_path`` by itself (gate/engineio.py); an
open session's requests pass it untouched, so the sessions themselves are the app's. A
drain ends them, paced with the gate's own connections over ``COORD_DRAIN_SPREAD``, when
the gate is given them::

    app.add_middleware(ConnectionGate, coordinator=coord, sessions=SocketIOSessions(sio))

Each session is ended as a dropped transport, as a server's own shutdown would (the app's
``disconnect`` handler runs, with reason ``server disconnect``), so that the npm
``socket.io-client`` and python-socketio's ``AsyncClient`` both reconnect, with their own
backoff, to the instances still serving. Neither reads a retry hint here: there is no
close reason to carry one. python-socketio is not imported: any object with an engine.io
server as ``.eio`` (python-socketio's ``AsyncServer``), or that server itself, will do.
"""

from __future__ import annotations

import functools
from typing import Any

from coordinator._compat import engineio
from coordinator.gate.connections import SessionCloser

__all__ = ["SocketIOSessions"]


class SocketIOSessions:
    """The open sessions of a python-socketio ``AsyncServer`` (or a python-engineio one),
    for a gate's ``sessions``: each call lists one closer per engine.io session open now."""

    def __init__(self, server: Any) -> None:
        self.engineio = getattr(server, "eio", server)

    def __call__(self) -> list[SessionCloser]:
        return [functools.partial(engineio.drop, self.engineio, sid)
                for sid in engineio.session_ids(self.engineio)]

    def __repr__(self) -> str:
        return f"SocketIOSessions({self.engineio!r})"
