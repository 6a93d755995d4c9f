"""What the drain needs from the servers' (and their event loops') internals.

The drain (coordinator/instance/drain.py, signals.py) takes over a server's shutdown:
its signal handler, wherever the server keeps it, and uvicorn's shutdown itself. Servers
offer no public way to do either, so this module reads and wraps what they keep to
themselves, and nothing outside it does:

- asyncio's ``loop._signal_handlers`` and its ``Handle``'s callback, arguments and
  context (hypercorn ``-w 0``);
- uvloop's C-level signal table, reached through ``gc.get_referents`` (granian
  ``--loop uvloop``);
- granian's own handler on rloop, whose table lives in Rust: its closure, found among
  the garbage collector's objects by its ``__qualname__``;
- hypercorn's multiprocess shutdown event, which a worker polls with ``is_set``;
- uvicorn's ``Server.shutdown``, which answers every handshake not yet accepted with
  HTTP 500 at once, before the lifespan's shutdown and with no signal, when the server
  stops from within (``--limit-max-requests``; gunicorn's ``max_requests`` with uvicorn
  workers).

Each is used only with the versions the suite ran it with (:data:`TESTED`); with
another version the function answers as if the server kept nothing to find (the
drain's public fallback: no takeover, said by the health document's ``drain`` field) and
logs once why.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import importlib.metadata
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from typing import Any

log = logging.getLogger("coordinator.compat")

# (lowest, highest) major.minor of each dependency whose internals are read here: the
# versions tests/unit/test_signals.py, tests/e2e/test_servers.py, test_drain.py and
# test_max_requests.py ran them with. Widen a range only once the suite passed on it.
TESTED: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "python": ((3, 11), (3, 11)),  # asyncio's loop._signal_handlers, Handle internals
    "uvloop": ((0, 23), (0, 23)),
    "rloop": ((0, 5), (0, 5)),
    "granian": ((2, 8), (2, 8)),
    "hypercorn": ((0, 18), (0, 18)),
    "uvicorn": ((0, 52), (0, 55)),  # bin/test-versions: 0.52.1 (floor), 0.54 (lock), newest
}
_warned: set[str] = set()

LoopHandler = tuple[Callable[..., Any], tuple[Any, ...], contextvars.Context | None]


def version_of(name: str) -> tuple[int, int] | None:
    """The installed major.minor of ``name`` (``python``: the interpreter's), or None."""
    if name == "python":
        return sys.version_info[:2]
    try:
        text = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    parts = [int(p) for p in re.findall(r"\d+", text)[:2]]
    return (parts[0], parts[1]) if len(parts) == 2 else None


def tested(name: str, what: str) -> bool:
    """Whether ``name``'s installed version is one the suite ran ``what`` with; if not,
    say so once in the log."""
    low, high = TESTED[name]
    found = version_of(name)
    if found is not None and low <= found <= high:
        return True
    if name not in _warned:
        _warned.add(name)
        shown = ".".join(map(str, found)) if found else "unknown"
        log.warning("%s %s is not a version %s was tested with (%s to %s): left alone, as "
                    "if the server kept no handler there (docs/guide.md: Drain)", name, shown,
                    what, ".".join(map(str, low)), ".".join(map(str, high)))
    return False


# -- signal handlers kept by event loops -------------------------------------------------

def loop_signal_handler(loop: asyncio.AbstractEventLoop, sig: int) -> LoopHandler | None:
    """(callback, args, context) given to ``loop.add_signal_handler(sig, ...)``, or None:
    none, or one kept where this version of the loop is not known to keep it (found, but
    not trusted: logged once)."""
    module = type(loop).__module__
    if module.startswith("rloop"):
        found, name = _granian_on_rloop(sig), "rloop"
        if found is not None and not tested("granian", "finding its handler on rloop"):
            return None
    elif module.startswith("uvloop"):
        found, name = _uvloop_handler(loop, sig), "uvloop"
    else:
        found, name = _asyncio_handler(loop, sig), "python"
    if found is None or not tested(name, "reading the event loop's signal handlers"):
        return None
    return found


def _asyncio_handler(loop: asyncio.AbstractEventLoop, sig: int) -> LoopHandler | None:
    """asyncio's unix event loop keeps a Handle per signal in ``loop._signal_handlers``;
    asyncio.Handle has no public accessor for what it calls."""
    handlers = getattr(loop, "_signal_handlers", None)
    handle = handlers.get(sig) if isinstance(handlers, dict) else None
    if handle is None:
        return None
    return (handle._callback, tuple(handle._args or ()),
            getattr(handle, "_context", None))


def loop_handler_is(loop: asyncio.AbstractEventLoop, sig: int,
                    handler: Callable[..., Any]) -> bool | None:
    """Whether ``handler`` is what ``loop`` runs on ``sig`` now; None where the loop's
    table cannot be read (rloop)."""
    if type(loop).__module__.startswith("rloop"):
        return None
    found = loop_signal_handler(loop, sig)
    return found is not None and found[0] == handler


def _granian_on_rloop(sig: int) -> LoopHandler | None:
    """rloop (granian's first choice when installed) keeps its table in Rust, out of
    reach; granian's own handler is a closure that the garbage collector can find."""
    for obj in gc.get_objects():
        if (getattr(obj, "__module__", None) == "granian._signals"
                and getattr(obj, "__qualname__", "")
                == "set_loop_signals.<locals>.signal_handler"):
            return obj, (sig, None), None
    return None


def _uvloop_handler(loop: asyncio.AbstractEventLoop, sig: int) -> LoopHandler | None:
    """uvloop.Loop's ``cdef dict _signal_handlers`` is no Python attribute, but Cython's
    tp_traverse shows it to gc.get_referents(); its values are uvloop Handles whose
    referents are the loop, the context, the callback and its arguments."""
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


def is_loop_stub(handler: object) -> bool:
    """Python-level handlers an event loop installs only to wake itself (not a server's):
    asyncio's ``_sighandler_noop``, rloop's ``_noop``, a bound method of a uvloop loop."""
    name = getattr(handler, "__qualname__", "") or getattr(handler, "__name__", "")
    if name == "_sighandler_noop":
        return True
    if str(getattr(handler, "__module__", "")).startswith("rloop"):
        return True
    owner = getattr(handler, "__self__", None)
    return owner is not None and type(owner).__module__.startswith("uvloop")


# -- hypercorn's multiprocess shutdown event --------------------------------------------

@dataclass
class HiddenEvent:
    """hypercorn's shutdown event in a worker process, hidden from hypercorn's own poll
    (``hypercorn.utils.check_multiprocess_shutdown_event`` calls ``is_set``) until
    :meth:`release`; :meth:`is_set` is the truth, for us."""

    event: Event
    released: bool = False

    def is_set(self) -> bool:
        return Event.is_set(self.event)

    def set(self) -> None:
        self.event.set()

    def release(self) -> None:
        self.released = True

    def unhide(self) -> None:
        vars(self.event).pop("is_set", None)


def hide_hypercorn_shutdown_event() -> HiddenEvent | None:
    """In a hypercorn worker process (the main thread): its parent's shutdown event,
    hidden from hypercorn until released. None elsewhere, or with an untested hypercorn.

    An ``is_set`` on the instance shadows the method for hypercorn's poll.
    """
    if "hypercorn" not in sys.modules or not tested("hypercorn", "hiding its shutdown "
                                                    "event"):
        return None
    events = [o for o in gc.get_objects() if isinstance(o, Event)]
    if len(events) != 1:
        return None
    hidden = HiddenEvent(events[0])

    def is_set() -> bool:
        return hidden.released and hidden.is_set()

    hidden.event.is_set = is_set  # type: ignore[method-assign]
    return hidden


# -- uvicorn's shutdown -----------------------------------------------------------------

def wrap_uvicorn_shutdown(server_handler: object,
                          before: Callable[[], Awaitable[None]]) -> Callable[[], None] | None:
    """Run ``before()`` first whenever the uvicorn server whose signal handler is
    ``server_handler`` shuts down, however it came to (a signal, its request limit, its
    ``should_exit`` set by anyone); returns what undoes it. None: not a uvicorn server,
    or an untested uvicorn.

    uvicorn has no hook between "stop" and its ``Server.shutdown``, which calls every
    connection's ``shutdown()`` at once: a WebSocket handshake not yet accepted is
    answered with HTTP 500 there, before the lifespan's shutdown. ``Server._serve`` calls
    ``self.shutdown(sockets=...)``: an attribute on the instance is what it calls.
    """
    server = getattr(server_handler, "__self__", None)  # Server.handle_exit, bound
    uvicorn = sys.modules.get("uvicorn")
    if uvicorn is None or not isinstance(server, uvicorn.Server):
        return None
    if not tested("uvicorn", "wrapping Server.shutdown"):
        return None
    original = server.shutdown

    async def shutdown(*args: Any, **kwargs: Any) -> None:
        try:
            await before()
        except Exception:  # the server's own shutdown runs whatever happened to ours
            log.exception("the drain before uvicorn's shutdown failed")
        await original(*args, **kwargs)

    server.shutdown = shutdown

    def unwrap() -> None:
        if vars(server).get("shutdown") is shutdown:
            del server.shutdown

    return unwrap
