"""Taking over a server's shutdown signal, whatever the server, and handing it back.

The gate runs inside somebody else's server. To drain on SIGTERM it must act first, yet
let the server's own shutdown run afterwards. Servers install their handlers in one of
two ways, and both are in place by the time the application's lifespan starts:

- ``signal.signal`` (uvicorn's ``Server.capture_signals``, so also ``fastapi run``,
  ``uvicorn --workers N`` in each worker, gunicorn's ``UvicornWorker``): the previous
  handler is ``signal.getsignal(sig)``, a plain function to call later;
- ``loop.add_signal_handler`` (hypercorn ``-w 0``, granian's workers): asyncio keeps the
  callback in ``loop._signal_handlers``; uvloop keeps it in a C-level dict that only the
  garbage collector's referents reach; rloop keeps it in Rust, so granian's own handler
  (the one it registers on rloop) is found among the garbage collector's objects.

One server signals otherwise: hypercorn with worker processes (its default) catches
SIGTERM in its parent, which sets a ``multiprocessing`` event that each worker polls
every 0.1 s; a worker has no handler at all. :func:`take_hypercorn_event` stands between
the event and hypercorn's poll instead.

:func:`take` installs our handler either way and returns a :class:`Taken` whose
``chain()`` runs the server's handler as if the signal had just arrived, and whose
``restore()`` puts it back.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

# What a process has when no server installed anything: nothing to chain to.
_NOT_A_SERVER = (signal.SIG_DFL, signal.SIG_IGN, None, signal.default_int_handler)


@dataclass
class Taken:
    """Our handler is installed for ``sig``; ``how`` says where the server's was found."""

    sig: int
    how: str
    chain: Callable[[], None]
    restore: Callable[[], None]


def take(loop: asyncio.AbstractEventLoop, sig: int,
         handler: Callable[[], None]) -> Taken | None:
    """Route ``sig`` to ``handler`` (run on ``loop``), keeping the server's for ``chain``.

    None when there is nothing to take over: not the main thread (signals are delivered
    there only), or no server handler for ``sig`` in this process.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    found = _loop_handler(loop, sig)
    if found is not None:
        callback, args, context = found
        loop.add_signal_handler(sig, handler)

        def chain_loop() -> None:
            if context is not None:
                context.run(callback, *args)
            else:
                callback(*args)

        def restore_loop() -> None:
            loop.add_signal_handler(sig, callback, *args)

        return Taken(sig, f"loop.add_signal_handler ({type(loop).__module__})", chain_loop,
                     restore_loop)
    previous = signal.getsignal(sig)
    if not callable(previous) or previous in _NOT_A_SERVER or _is_loop_stub(previous):
        return None
    server_handler: Callable[[int, FrameType | None], Any] = previous

    def ours(_signum: int, _frame: FrameType | None) -> None:
        # A Python-level handler runs between two bytecodes of the main thread, perhaps in
        # the middle of the event loop's own code: hand over to the loop, do nothing here.
        loop.call_soon_threadsafe(handler)

    signal.signal(sig, ours)

    def chain_signal() -> None:
        server_handler(sig, None)

    def restore_signal() -> None:
        if signal.getsignal(sig) is ours:
            signal.signal(sig, server_handler)

    return Taken(sig, "signal.signal", chain_signal, restore_signal)


def take_hypercorn_event(loop: asyncio.AbstractEventLoop,
                         handler: Callable[[], None]) -> Taken | None:
    """In a hypercorn worker process: run ``handler`` when the parent's shutdown event is
    set, and hide the event from hypercorn until ``chain()``.

    hypercorn's worker polls ``shutdown_event.is_set()`` (``hypercorn.utils.
    check_multiprocess_shutdown_event``); an ``is_set`` on the instance shadows the
    method for that poll. A SIGTERM sent to the worker itself (a whole process group
    signalled) reaches ``handler`` too. None when this is not such a process.
    """
    if "hypercorn" not in sys.modules or threading.current_thread() is not threading.main_thread():
        return None
    from multiprocessing.synchronize import Event

    events = [o for o in gc.get_objects() if isinstance(o, Event)]
    if len(events) != 1:
        return None
    (event,) = events
    real_is_set = Event.is_set
    released = False

    def is_set() -> bool:
        return released and real_is_set(event)

    async def watch() -> None:
        # A flag in shared memory, set by another process: polled, as hypercorn polls it.
        while not real_is_set(event):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        handler()

    def chain() -> None:
        nonlocal released
        released = True
        if not real_is_set(event):
            event.set()  # the signal came to this worker alone: stop it all the same

    def restore() -> None:
        watcher.cancel()
        vars(event).pop("is_set", None)
        signal.signal(signal.SIGTERM, previous)

    event.is_set = is_set  # type: ignore[method-assign]
    watcher = loop.create_task(watch(), name="coordinator-hypercorn-shutdown")
    previous = signal.signal(signal.SIGTERM,
                             lambda _signum, _frame: loop.call_soon_threadsafe(handler))
    return Taken(signal.SIGTERM, "hypercorn's multiprocess shutdown event", chain, restore)


def _loop_handler(loop: asyncio.AbstractEventLoop,
                  sig: int) -> tuple[Callable[..., Any], tuple[Any, ...],
                                     contextvars.Context | None] | None:
    """(callback, args, context) given to ``loop.add_signal_handler(sig, ...)``, or None."""
    handlers = getattr(loop, "_signal_handlers", None)  # asyncio's unix event loop
    if isinstance(handlers, dict):
        handle = handlers.get(sig)
        if handle is None:
            return None
        # asyncio.Handle has no public accessor for what it calls (a private name of a
        # dependency: to be confined with the others to one compatibility module).
        return (handle._callback, tuple(handle._args or ()),  # noqa: SLF001
                getattr(handle, "_context", None))
    if type(loop).__module__.startswith("rloop"):
        # rloop (granian's first choice when installed) keeps its table in Rust, out of
        # reach; granian's own handler is a closure that the garbage collector can find.
        for obj in gc.get_objects():
            if (getattr(obj, "__module__", None) == "granian._signals"
                    and getattr(obj, "__qualname__", "")
                    == "set_loop_signals.<locals>.signal_handler"):
                return obj, (sig, None), None
        return None
    if type(loop).__module__.startswith("uvloop"):
        # uvloop.Loop's `cdef dict _signal_handlers` is no Python attribute, but Cython's
        # tp_traverse shows it to gc.get_referents(); its values are uvloop Handles whose
        # referents are the loop, the context, the callback and its arguments.
        for ref in gc.get_referents(loop):
            if not isinstance(ref, dict) or sig not in ref:
                continue
            handle = ref[sig]
            if type(handle).__name__ != "Handle":
                continue
            parts = [r for r in gc.get_referents(handle) if r is not loop]
            callback = next((r for r in parts if callable(r)), None)
            if callback is None:
                continue
            context = next((r for r in parts if isinstance(r, contextvars.Context)), None)
            args = next((r for r in parts if isinstance(r, tuple)), ())
            return callback, args, context
    return None


def _is_loop_stub(handler: object) -> bool:
    """Python-level handlers an event loop installs only to wake itself (not a server's)."""
    name = getattr(handler, "__qualname__", "") or getattr(handler, "__name__", "")
    if name == "_sighandler_noop":  # asyncio
        return True
    if str(getattr(handler, "__module__", "")).startswith("rloop"):  # rloop's _noop
        return True
    owner = getattr(handler, "__self__", None)  # uvloop: a bound method of the loop
    return owner is not None and type(owner).__module__.startswith("uvloop")
