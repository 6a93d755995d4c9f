"""The drain: what SIGTERM does to a gated instance, under whatever server runs it.

On the first SIGTERM the instance turns ``draining`` at once (held handshakes are
rejected, new ones too, ``draining`` is published and ``/health/ready`` answers 503),
keeps listening for ``COORD_DRAIN_GRACE`` seconds so that late arrivals get a clean 503
instead of a refused connection, closes its open connections with 1012 spread over the
last ``COORD_DRAIN_SPREAD`` seconds of the grace, leaves the fleet (record, index entry
and leases removed, ``stopped`` published), and only then hands the signal to the
server, whose own shutdown finds nothing left to cut. A second SIGTERM, or a SIGINT,
ends the drain at once: what is still open is closed with 1012 now, and the server's own
handling of that signal runs.

A server that stops from within, with no signal (uvicorn's ``--limit-max-requests``, and
gunicorn's ``max_requests`` which its uvicorn workers pass on), drains the same way:
uvicorn's shutdown is wrapped (:func:`coordinator._compat.servers.wrap_uvicorn_shutdown`)
so that the drain runs before it, and its own answer to a pending handshake (HTTP 500)
finds none left.

The gate starts this when its application's lifespan starts (:meth:`Drains.attach`), so
no launcher is needed: ``uvicorn app:app``, ``fastapi run``, gunicorn's uvicorn workers,
hypercorn and granian are all covered; :mod:`coordinator.instance.signals` says how each server's
handler is found. Without a lifespan (``--lifespan off``) there is no drain.

That takeover is the zero-setup fallback. A server started through one of the public
entry points of :mod:`coordinator.serve` (uvicorn's :class:`DrainingServer`, hypercorn's
``shutdown_trigger``) declares itself with :meth:`Drains.explicit` before its lifespan
starts: nothing is taken over then, and the server's own shutdown calls
:meth:`Drains.drain_now` first. The drain endpoint (:mod:`coordinator.ops.drain_route`)
calls it too, under any server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coordinator._compat import servers
from coordinator.contract.phases import State
from coordinator.instance import signals

if TYPE_CHECKING:
    from coordinator.instance.coordinator import Coordinator

log = logging.getLogger("coordinator.drain")
CLOSE_WAIT = 1.0  # seconds the last closes may take before the drain moves on
# A SIGTERM this soon after the first is the same stop, not a second one: a whole process
# group signalled (systemd's default KillMode), then a multi-process server's parent
# forwarding it to its workers.
SAME_SIGNAL = 1.0
END_WAIT = 0.5  # seconds a second signal waits for our closes before the server's turn


async def drain(coord: Coordinator, grace: float | None = None,
                spread: float | None = None) -> None:
    """Drain ``coord`` now: reject, wait out the grace, close paced, leave the fleet."""
    settings = coord.settings
    grace = settings.drain_grace if grace is None else grace
    spread = settings.drain_spread_seconds if spread is None else min(spread, grace)
    loop = asyncio.get_running_loop()
    ends = loop.time() + grace
    coord.begin_drain()
    log.info("instance %s draining: rejecting new handshakes for %.1fs, closing open "
             "connections over the last %.1fs", coord.id, grace, spread)
    if grace - spread > 0:
        await asyncio.sleep(grace - spread)
    closed = await asyncio.gather(*(g.close_connections(timeout=CLOSE_WAIT, spread=spread)
                                    for g in coord.gates))
    # Listening (and turning newcomers away cleanly) for the whole grace, however few
    # connections there were to close.
    await asyncio.sleep(max(0.0, ends - loop.time()))
    log.info("instance %s drained: %d connection(s) closed with 1012 or session(s) ended",
             coord.id, sum(closed))
    await coord.stop()


@dataclass(frozen=True)
class Entry:
    """A server's public entry point that runs the drain itself: ``via`` names it (the
    health document's ``drain.via``); ``armed()`` says whether SIGTERM still reaches it
    (False: an application's own handler replaced the server's; None: cannot be read)."""

    via: str
    armed: Callable[[], bool | None]


class Drains:
    """The drains of this process, run on the shutdown signal the server would have had.

    One per process (:data:`DRAINS`): every coordinator whose gate's lifespan started is
    attached, and one SIGTERM drains them all together before the server hears of it.
    """

    def __init__(self) -> None:
        self.coordinators: list[Coordinator] = []
        self._taken: dict[int, signals.Taken] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._first_term: float | None = None  # when the first SIGTERM came
        self._ending: asyncio.Task[None] | None = None
        self._handover: asyncio.Task[None] | None = None
        self._unwrap: Callable[[], None] | None = None
        self._replaced = False  # our SIGTERM handler was replaced (warned once)
        self._entry: Entry | None = None

    @property
    def hooked(self) -> str | None:
        """How SIGTERM drains this process: the explicit entry point's name, else how the
        server's handler was taken over (None: neither, or the handler has been replaced
        since, by the application's own: then SIGTERM no longer drains)."""
        if self._entry is not None:
            how, installed = self._entry.via, self._entry.armed()
        else:
            taken = self._taken.get(signal.SIGTERM)
            if taken is None:
                return None
            how, installed = taken.how, taken.installed()
        if installed is False:
            if not self._replaced:
                self._replaced = True
                log.warning("the drain's SIGTERM handler (through %s) was replaced by "
                            "another since: SIGTERM will not drain this process "
                            "(docs/guide.md: Drain)", how)
            return None
        return how

    @contextlib.contextmanager
    def explicit(self, via: str,
                 armed: Callable[[], bool | None] = lambda: True) -> Iterator[None]:
        """While this runs, a server's public entry point named ``via`` drains the process
        itself (it calls :meth:`drain_now` before its own shutdown, :meth:`end_now` on a
        second signal): :meth:`attach` takes no signal over. Enter it before the app's
        lifespan starts."""
        previous, self._entry = self._entry, Entry(via, armed)
        self._replaced = False
        try:
            yield
        finally:
            self._entry = previous

    @property
    def draining(self) -> bool:
        """A drain has begun in this process (and may be over)."""
        return self._task is not None

    async def drain_now(self) -> None:
        """Drain every attached instance now, unless a drain has begun already; return
        once it is done (or once a second signal's end is). What a server's entry point
        awaits before its own shutdown, and the drain endpoint before it answers."""
        if self._task is None and self._ending is None \
                and any(c.state is not State.STOPPED for c in self.coordinators):
            self._task = asyncio.get_running_loop().create_task(
                self._drain_all(chain=False), name="coordinator-drain")
        while pending := [t for t in (self._task, self._ending) if t is not None
                          and not t.done()]:
            await asyncio.wait(pending)

    def end_now(self) -> None:
        """A SIGINT or a second SIGTERM to an explicit entry point: what is held is
        rejected and what is open closed with 1012 now (a drain under way is cut short),
        the fleet left, and :meth:`drain_now` returns; the server's own handling of that
        signal is its own (nothing is chained)."""
        if self.coordinators and (self._ending is None or self._ending.done()):
            log.info("ending the drain now")
            self._end_now(None)

    def armed(self, coord: Coordinator) -> str | None:
        """How SIGTERM will drain ``coord`` (the takeover's name), or None: it will not
        (its gate's lifespan has not started, or no server handler was found)."""
        return self.hooked if coord in self.coordinators else None

    def attach(self, coord: Coordinator) -> None:
        """Drain ``coord`` on SIGTERM (called when its gate's lifespan starts)."""
        if coord not in self.coordinators:
            self.coordinators.append(coord)
        if self._entry is not None:
            if len(self.coordinators) == 1:
                self._task = self._ending = None
            log.info("SIGTERM will drain instance %s first (through %s)", coord.id,
                     self._entry.via)
            return
        if self._taken:
            return
        self._loop = asyncio.get_running_loop()
        self._task = None
        self._first_term = None
        self._replaced = False
        for sig, handler in ((signal.SIGTERM, self._on_term), (signal.SIGINT, self._on_int),
                             (signal.SIGQUIT, self._on_quit)):
            taken = signals.take(self._loop, sig, handler)
            if taken is None and sig == signal.SIGTERM:
                taken = signals.take_hypercorn_event(self._loop, handler)
            if taken is not None:
                self._taken[sig] = taken
        term = self._taken.get(signal.SIGTERM)
        if term is None:
            log.warning("no server SIGTERM handler found in this process: instance %s will "
                        "not drain on SIGTERM (docs/guide.md: Drain)", coord.id)
            return
        self._unwrap = servers.wrap_uvicorn_shutdown(term.server_handler,
                                                     self._before_server_shutdown)
        also = "; uvicorn's Server.shutdown wrapped: a stop from within drains too" \
            if self._unwrap is not None else ""
        log.info("SIGTERM will drain instance %s first (taken over through %s%s)", coord.id,
                 self.hooked, also)

    def detach(self, coord: Coordinator) -> None:
        """``coord``'s lifespan ended; the last one gives the signals back."""
        with contextlib.suppress(ValueError):
            self.coordinators.remove(coord)
        if not self.coordinators:
            for taken in self._taken.values():
                taken.restore()
            self._taken.clear()
            if self._unwrap is not None:
                self._unwrap()
                self._unwrap = None
            for task in (self._task, self._ending, self._handover):
                if task is not None and not task.done():
                    task.cancel()

    # -- the signals ------------------------------------------------------------------

    def _on_term(self) -> None:
        loop = asyncio.get_running_loop()
        if self._first_term is None:
            self._first_term = loop.time()
            if self._task is None:
                log.info("SIGTERM: draining before the server shuts down")
                self._task = loop.create_task(self._drain_all(), name="coordinator-drain")
            else:  # begun by the drain endpoint (a preStop hook): the server's turn after
                log.info("SIGTERM: the server shuts down once the drain under way is done")
                self._handover = loop.create_task(self._chain_after(self._task),
                                                  name="coordinator-drain-handover")
            return
        if loop.time() - self._first_term < SAME_SIGNAL:
            return
        log.info("second SIGTERM: ending the drain now")
        self._end_now(signal.SIGTERM)

    def _on_int(self) -> None:
        self._end_now(signal.SIGINT)

    def _on_quit(self) -> None:  # gunicorn's quick shutdown
        self._end_now(signal.SIGQUIT)
        self._chain(signal.SIGTERM)

    async def _drain_all(self, chain: bool = True) -> None:
        try:
            await asyncio.gather(*(drain(c) for c in list(self.coordinators)))
        except Exception:  # cancelled (a second signal): _answer_then_chain hands over
            log.exception("the drain failed; the server's shutdown comes now")
        if chain:
            self._chain(signal.SIGTERM)

    async def _chain_after(self, task: asyncio.Task[None]) -> None:
        await asyncio.wait([task])
        if self._ending is None:  # a second signal's end hands the signal on itself
            self._chain(signal.SIGTERM)

    async def _before_server_shutdown(self) -> None:
        """The server's shutdown is beginning: after our drain, when a SIGTERM started it;
        with no signal at all when the server stops from within (uvicorn's request
        limit), and then the drain runs now, with nothing to hand on once done. Either
        way the server's shutdown waits for the drain (and a second signal's end)."""
        if self._task is None and any(c.state is not State.STOPPED for c in self.coordinators):
            log.info("the server is shutting down with no signal (its request limit?): "
                     "draining first")
        await self.drain_now()

    def _end_now(self, sig: int | None) -> None:
        """Stop draining: reject what is held, close what is open with 1012, then let the
        server handle ``sig`` as it would have."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._ending is None or self._ending.done():
            self._ending = asyncio.get_running_loop().create_task(
                self._answer_then_chain(sig), name="coordinator-drain-end")
        elif sig is not None:
            self._chain(sig)  # a third signal: the server's, at once

    async def _answer_then_chain(self, sig: int | None) -> None:
        """Our answers first (a server's shutdown answers a pending handshake with 500),
        and the fleet left (a forced exit skips the lifespan that would stop the
        coordinator); then the server's own handling of ``sig`` (None: an explicit entry
        point, which handles its signals itself)."""
        try:
            closing = []
            for coord in self.coordinators:
                coord.begin_drain()  # held handshakes rejected: 503 on the next turns
                if coord.state is not State.STOPPED:
                    closing += [g.close_connections(timeout=END_WAIT) for g in coord.gates]
            await asyncio.gather(*closing)
            await asyncio.sleep(END_WAIT / 10)  # the rejections' writes, a few loop turns
            await asyncio.gather(*(c.stop() for c in self.coordinators))  # STOP_DEADLINE
        finally:
            if sig is not None:
                self._chain(sig)

    def _chain(self, sig: int) -> None:
        """The server's own handling of ``sig``, every time (a second SIGINT is uvicorn's
        "force exit")."""
        taken = self._taken.get(sig)
        if taken is not None:
            taken.chain()


DRAINS = Drains()


async def drain_now() -> None:
    """Drain every gated instance of this process now (unless a drain has begun) and
    return once drained: what a server of your own awaits before its shutdown. The
    instances are those whose app's lifespan has started."""
    await DRAINS.drain_now()
