"""The drain's public entry points (docs/guide.md, Drain), one per way of serving:

- :class:`DrainingServer`: a ``uvicorn.Server`` whose shutdown drains first
  (``DrainingServer(uvicorn.Config(app, ...)).run()``);
- :func:`serve_hypercorn`: ``hypercorn.asyncio.serve`` with a ``shutdown_trigger`` that
  waits for SIGTERM and drains (``asyncio.run(serve_hypercorn(app, config))``);
- :class:`DrainApp`: ``POST /drain`` with a bearer token (``COORD_DRAIN_TOKEN``), for a
  Kubernetes ``preStop`` hook or an operator, under any server;
- :func:`drain_now`: what they all await, for a server of your own.

Without any of them the gate takes over the server's SIGTERM handler when the app's
lifespan starts (the zero-setup fallback). Each name imports its server only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coordinator._lazy import lazy_exports

_EXPORTS = {
    "DrainApp": "coordinator.ops.drain_route",
    "DrainingServer": "coordinator.ops.uvicorn_server",
    "drain_now": "coordinator.instance.drain",
    "serve_hypercorn": "coordinator.ops.hypercorn_serve",
}

__all__ = ["DrainApp", "DrainingServer", "drain_now", "serve_hypercorn"]

if TYPE_CHECKING:
    from coordinator.instance.drain import drain_now
    from coordinator.ops.drain_route import DrainApp
    from coordinator.ops.hypercorn_serve import serve_hypercorn
    from coordinator.ops.uvicorn_server import DrainingServer


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
