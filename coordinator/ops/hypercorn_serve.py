"""The drain's public entry point under hypercorn: :func:`serve_hypercorn`.

hypercorn's programmatic ``hypercorn.asyncio.serve(app, config, shutdown_trigger=...)``
shuts down gracefully when ``shutdown_trigger`` returns, and installs no signal handler
of its own when given one. The trigger here waits for SIGTERM (installed with the event
loop's public ``add_signal_handler``), drains, then returns: hypercorn's shutdown finds
nothing left to answer or cut. No takeover of anything of hypercorn's.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any, Literal

from coordinator._compat import servers
from coordinator.instance.drain import DRAINS, SAME_SIGNAL

log = logging.getLogger("coordinator.drain")
VIA = "coordinator.serve.serve_hypercorn (hypercorn shutdown_trigger)"


async def serve_hypercorn(app: Any, config: Any, *,
                          mode: Literal["asgi", "wsgi"] | None = None) -> None:
    """``hypercorn.asyncio.serve(app, config)`` with a ``shutdown_trigger`` that drains.

        asyncio.run(serve_hypercorn(app, hypercorn.Config.from_mapping(bind=["0.0.0.0:8000"])))

    The first SIGTERM drains every gated instance of the app (503 to newcomers for the
    grace, 1012 to open connections over its spread, the fleet left), then hypercorn
    shuts down. A SIGINT, or a SIGTERM more than a second after the first, ends the
    drain at once. Runs in the main thread (signals are delivered there).
    """
    from hypercorn.asyncio import serve  # the `hypercorn` server, installed by the user

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    first: list[float] = []

    def on_signal(sig: int) -> None:
        now = loop.time()
        if sig == signal.SIGTERM and not first:
            first.append(now)
            log.info("SIGTERM: draining before hypercorn shuts down")
        elif sig == signal.SIGINT or now - first[0] >= SAME_SIGNAL:
            DRAINS.end_now()
        stop.set()

    def armed() -> bool | None:
        found = servers.loop_signal_handler(loop, signal.SIGTERM)
        return None if found is None else found[0] == on_signal  # None: cannot be read

    async def trigger() -> None:
        await stop.wait()
        await DRAINS.drain_now()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        with DRAINS.explicit(VIA, armed):
            await serve(app, config, shutdown_trigger=trigger, mode=mode)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
