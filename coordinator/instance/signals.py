"""Taking over a server's shutdown signal, whatever the server, and handing it back.

The gate runs inside somebody else's server. To drain on SIGTERM it must act first, yet
let the server's own shutdown run afterwards. Servers install their handlers in one of
two ways, and both are in place by the time the application's lifespan starts:

- ``signal.signal`` (uvicorn's ``Server.capture_signals``, so also ``fastapi run``,
  ``uvicorn --workers N`` in each worker, gunicorn's ``UvicornWorker``): the previous
  handler is ``signal.getsignal(sig)``, a plain function to call later;
- ``loop.add_signal_handler`` (hypercorn ``-w 0``, granian's workers): each event loop
  keeps the callback somewhere of its own (asyncio, uvloop, rloop), which only
  :mod:`coordinator._compat.servers` reads, with the versions it was tested with.

One server signals otherwise: hypercorn with worker processes (its default) catches
SIGTERM in its parent, which sets a ``multiprocessing`` event that each worker polls
every 0.1 s; a worker has no handler at all. :func:`take_hypercorn_event` stands between
the event and hypercorn's poll instead.

:func:`take` installs our handler either way and returns a :class:`Taken` whose
``chain()`` runs the server's handler as if the signal had just arrived, whose
``restore()`` puts it back unless someone else installed a handler since, and whose
``installed()`` says whether ours is still the one a signal reaches (an application
that installs its own later disarms the drain: the health document says so).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from coordinator._compat import servers

# What a process has when no server installed anything: nothing to chain to.
_NOT_A_SERVER = (signal.SIG_DFL, signal.SIG_IGN, None, signal.default_int_handler)


@dataclass
class Taken:
    """Our handler is installed for ``sig``; ``how`` says where the server's was found.

    ``installed()``: False once something else replaced our handler (an application's own,
    installed after us), None where that cannot be read (rloop keeps its table in Rust).
    """

    sig: int
    how: str
    chain: Callable[[], None]
    restore: Callable[[], None]
    installed: Callable[[], bool | None]
    server_handler: object = None  # the server's handler, as found (None: a loop's)


def take(loop: asyncio.AbstractEventLoop, sig: int,
         handler: Callable[[], None]) -> Taken | None:
    """Route ``sig`` to ``handler`` (run on ``loop``), keeping the server's for ``chain``.

    None when there is nothing to take over: not the main thread (signals are delivered
    there only), or no server handler for ``sig`` in this process.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    found = servers.loop_signal_handler(loop, sig)
    if found is not None:
        return _take_from_loop(loop, sig, handler, found)
    previous = signal.getsignal(sig)
    if not callable(previous) or previous in _NOT_A_SERVER or servers.is_loop_stub(previous):
        return None
    server_handler: Callable[[int, FrameType | None], Any] = previous

    def ours(_signum: int, _frame: FrameType | None) -> None:
        # A Python-level handler runs between two bytecodes of the main thread, perhaps in
        # the middle of the event loop's own code: hand over to the loop, do nothing here.
        loop.call_soon_threadsafe(handler)

    signal.signal(sig, ours)

    def chain_signal() -> None:
        server_handler(sig, None)

    def installed() -> bool:
        return signal.getsignal(sig) is ours

    def restore_signal() -> None:
        if installed():
            signal.signal(sig, server_handler)

    return Taken(sig, "signal.signal", chain_signal, restore_signal, installed, previous)


def _take_from_loop(loop: asyncio.AbstractEventLoop, sig: int, handler: Callable[[], None],
                    found: servers.LoopHandler) -> Taken:
    callback, args, context = found
    loop.add_signal_handler(sig, handler)

    def chain_loop() -> None:
        if context is not None:
            context.run(callback, *args)
        else:
            callback(*args)

    def installed() -> bool | None:
        return servers.loop_handler_is(loop, sig, handler)

    def restore_loop() -> None:
        if installed() is not False:  # not over a handler someone installed after us
            loop.add_signal_handler(sig, callback, *args)

    return Taken(sig, f"loop.add_signal_handler ({type(loop).__module__})", chain_loop,
                 restore_loop, installed)


def take_hypercorn_event(loop: asyncio.AbstractEventLoop,
                         handler: Callable[[], None]) -> Taken | None:
    """In a hypercorn worker process: run ``handler`` when the parent's shutdown event is
    set, and hide the event from hypercorn until ``chain()``
    (:func:`coordinator._compat.servers.hide_hypercorn_shutdown_event`). A SIGTERM sent to
    the worker itself (a whole process group signalled) reaches ``handler`` too. None
    when this is not such a process.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    hidden = servers.hide_hypercorn_shutdown_event()
    if hidden is None:
        return None

    async def watch() -> None:
        # A flag in shared memory, set by another process: polled, as hypercorn polls it.
        while not hidden.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        handler()

    def chain() -> None:
        hidden.release()
        if not hidden.is_set():
            hidden.set()  # the signal came to this worker alone: stop it all the same

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(handler)

    def restore() -> None:
        watcher.cancel()
        hidden.unhide()
        if signal.getsignal(signal.SIGTERM) is on_signal:
            signal.signal(signal.SIGTERM, previous)

    watcher = loop.create_task(watch(), name="coordinator-hypercorn-shutdown")
    previous = signal.signal(signal.SIGTERM, on_signal)
    # The event, not the signal, is how hypercorn's parent stops a worker: armed as long
    # as it is hidden.
    return Taken(signal.SIGTERM, "hypercorn's multiprocess shutdown event", chain, restore,
                 lambda: True)
