"""Taking over a server's SIGTERM and handing it back, both ways servers install one, and
the drain that runs in between: real signals sent to this process, a stand-in "server"
handler that records when it is called."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from coordinator.contract.phases import State
from coordinator.instance import signals
from coordinator.instance.drain import Drains, drain
from tests.support import FakeWebSocket, gate_for, handshake, run_phases

DEADLINE = 5.0


@contextlib.contextmanager
def server_handler(sig: int) -> Iterator[list[int]]:
    """A Python-level handler as uvicorn's capture_signals installs; restored after."""
    calls: list[int] = []
    previous = signal.signal(sig, lambda signum, _frame: calls.append(signum))
    try:
        yield calls
    finally:
        signal.signal(sig, previous)


def state_of(coord: Any) -> State:
    """The state now (a call: the type checker keeps no narrowing across it)."""
    return coord.state


async def until(predicate: Any) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.005)
    await asyncio.wait_for(poll(), DEADLINE)


async def one_open_connection(**settings: Any) -> tuple[Any, FakeWebSocket,
                                                       asyncio.Task[None]]:
    """A ready gate (``settings``) with one connection open on an app that keeps it."""
    gate, coord, _app = gate_for(**settings)
    gate.app = open_app
    await run_phases(coord, "init", "dependencies", "database", "cache", "services")
    client = FakeWebSocket()
    task = handshake(gate, client)
    await until(lambda: gate.state.connections)
    return coord, client, task


async def test_a_signal_signal_handler_is_taken_chained_and_restored() -> None:
    loop = asyncio.get_running_loop()
    ours: list[str] = []
    with server_handler(signal.SIGUSR1) as theirs:
        taken = signals.take(loop, signal.SIGUSR1, lambda: ours.append("ours"))
        assert taken is not None and taken.how == "signal.signal"
        os.kill(os.getpid(), signal.SIGUSR1)
        await until(lambda: ours)
        assert theirs == []  # the server did not hear of it
        taken.chain()
        assert theirs == [signal.SIGUSR1]
        taken.restore()
        os.kill(os.getpid(), signal.SIGUSR1)
        await until(lambda: len(theirs) == 2)
        assert ours == ["ours"]


async def test_a_loop_handler_is_taken_chained_and_restored() -> None:
    loop = asyncio.get_running_loop()
    theirs: list[str] = []
    ours: list[str] = []
    loop.add_signal_handler(signal.SIGUSR2, theirs.append, "theirs")
    try:
        taken = signals.take(loop, signal.SIGUSR2, lambda: ours.append("ours"))
        assert taken is not None and taken.how.startswith("loop.add_signal_handler")
        os.kill(os.getpid(), signal.SIGUSR2)
        await until(lambda: ours)
        assert theirs == []
        taken.chain()
        assert theirs == ["theirs"]
        taken.restore()
        os.kill(os.getpid(), signal.SIGUSR2)
        await until(lambda: len(theirs) == 2)
    finally:
        loop.remove_signal_handler(signal.SIGUSR2)


async def test_nothing_is_taken_where_no_server_handler_is_installed() -> None:
    loop = asyncio.get_running_loop()
    previous = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        assert signals.take(loop, signal.SIGUSR1, lambda: None) is None
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR1, previous)


async def open_app(scope: Any, receive: Any, send: Any) -> None:
    """Accepts and stays open until the client is gone."""
    await receive()
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


@pytest.fixture
def sigterm() -> Iterator[list[int]]:
    with server_handler(signal.SIGTERM) as calls, server_handler(signal.SIGINT):
        yield calls


async def test_sigterm_drains_first_then_hands_the_signal_to_the_server(sigterm) -> None:
    coord, client, task = await one_open_connection(drain_grace=0.3, drain_spread=0.1)
    drains = Drains()
    drains.attach(coord)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await until(lambda: coord.state is State.DRAINING)
        assert sigterm == [] and not task.done()  # open through the grace
        await until(lambda: sigterm)  # handed over only once the drain is done
        assert coord.state is State.STOPPED
        await asyncio.wait_for(task, DEADLINE)
        assert client.sent[-1]["code"] == 1012
    finally:
        drains.detach(coord)


async def test_a_second_sigterm_ends_the_drain_at_once(sigterm, monkeypatch) -> None:
    monkeypatch.setattr("coordinator.instance.drain.SAME_SIGNAL", 0.05)
    coord, client, task = await one_open_connection(drain_grace=30)
    drains = Drains()
    drains.attach(coord)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await until(lambda: coord.state is State.DRAINING)
        await asyncio.sleep(0.1)  # past SAME_SIGNAL: a second stop, not the same one again
        os.kill(os.getpid(), signal.SIGTERM)
        await until(lambda: sigterm)  # not 30 s later
        await asyncio.wait_for(task, DEADLINE)
        assert client.sent[-1]["code"] == 1012
        await asyncio.sleep(0.1)  # time for a wrongly repeated hand-over to show
        assert sigterm == [signal.SIGTERM]  # handed over once, not once per path
    finally:
        drains.detach(coord)


async def test_a_second_signal_answers_and_leaves_the_fleet_before_the_server_hears_it(
        monkeypatch) -> None:
    """The server's handler is called after our 1012 went out and the coordinator
    stopped (left the fleet): a forced exit would skip the lifespan that stops it."""
    monkeypatch.setattr("coordinator.instance.drain.SAME_SIGNAL", 0.05)
    coord, client, task = await one_open_connection(drain_grace=30)
    seen: list[tuple[str, State]] = []
    handlers = {sig: signal.signal(sig, lambda s, _f: seen.append(
        (client.types[-1], state_of(coord)))) for sig in (signal.SIGTERM, signal.SIGINT)}
    drains = Drains()
    drains.attach(coord)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await until(lambda: coord.state is State.DRAINING)
        os.kill(os.getpid(), signal.SIGINT)
        await until(lambda: seen)
        assert seen == [("websocket.close", State.STOPPED)]
        await asyncio.wait_for(task, DEADLINE)
    finally:
        drains.detach(coord)
        for sig, previous in handlers.items():
            signal.signal(sig, previous)


async def test_a_second_sigterm_during_the_spread_closes_the_rest_at_once(
        sigterm, monkeypatch) -> None:
    monkeypatch.setattr("coordinator.instance.drain.SAME_SIGNAL", 0.05)
    gate, coord, _app = gate_for(drain_grace=60, drain_spread=59.5)
    gate.app = open_app
    await run_phases(coord, "init", "dependencies", "database", "cache", "services")
    clients = [FakeWebSocket() for _ in range(3)]
    tasks = [handshake(gate, client) for client in clients]
    await until(lambda: len(gate.state.connections) == 3)
    drains = Drains()
    drains.attach(coord)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        # The spread begins 0.5 s in: the first close goes out, the next one ~20 s later.
        await until(lambda: any(task.done() for task in tasks))
        os.kill(os.getpid(), signal.SIGTERM)
        await until(lambda: sigterm)
        await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)  # not 20 s apart
        assert [client.sent[-1]["code"] for client in clients] == [1012] * 3
    finally:
        drains.detach(coord)


async def test_the_drain_listens_for_the_whole_grace_with_nothing_to_close() -> None:
    _gate, coord, _app = gate_for(drain_grace=0.3, drain_spread=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(drain(coord), DEADLINE)
    assert loop.time() - started >= 0.3  # a lower bound: the loop's timers never fire early
    assert coord.state is State.STOPPED


async def test_a_sigterm_right_after_the_first_is_the_same_stop(sigterm) -> None:
    """A process group signalled, then the server's parent forwarding the signal: one
    SIGTERM twice within a second must not cut the drain short."""
    _gate, coord, _app = gate_for(drain_grace=1.5, drain_spread=0)
    drains = Drains()
    drains.attach(coord)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await until(lambda: coord.state is State.DRAINING)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.2)  # time for a wrongly handled second signal to act
        assert sigterm == [] and coord.state is State.DRAINING
        await until(lambda: sigterm)
        assert state_of(coord) is State.STOPPED
    finally:
        drains.detach(coord)


async def test_health_and_metrics_say_whether_sigterm_drains_this_instance() -> None:
    """A takeover that misses only logged a warning at start: nothing a probe or a
    dashboard could see. The health document and a gauge say it now."""
    from coordinator.instance.drain import DRAINS
    from coordinator.ops.health import health_document
    from coordinator.ops.metrics import Metrics
    from tests.support import metric, parse_metrics

    _gate, coord, _app = gate_for()
    metrics = Metrics(coord)
    assert health_document(coord)["drain"] == {"armed": False, "via": None}  # not attached
    with server_handler(signal.SIGTERM):
        DRAINS.attach(coord)
        try:
            assert health_document(coord)["drain"] == {"armed": True, "via": "signal.signal"}
            assert metric(parse_metrics(metrics.render()), "coordinator_drain_armed") == 1
        finally:
            DRAINS.detach(coord)
    assert health_document(coord)["drain"]["armed"] is False
    assert metric(parse_metrics(metrics.render()), "coordinator_drain_armed") == 0


async def test_a_handler_the_app_installs_later_disarms_the_drain_visibly_and_is_kept(
        sigterm, monkeypatch) -> None:
    """The application replaced our SIGTERM handler after its lifespan started: SIGTERM no
    longer drains, and the health document and the gauge say so (they said ``armed``);
    when the lifespan ends, the application's handler stays (not the server's put back
    over it)."""
    from coordinator.ops.health import health_document
    from coordinator.ops.metrics import Metrics
    from tests.support import metric, parse_metrics

    _gate, coord, _app = gate_for()
    metrics = Metrics(coord)
    drains = Drains()
    monkeypatch.setattr("coordinator.ops.health.DRAINS", drains)
    monkeypatch.setattr("coordinator.ops.metrics.DRAINS", drains)
    drains.attach(coord)
    try:
        assert health_document(coord)["drain"] == {"armed": True, "via": "signal.signal"}
        apps: list[int] = []

        def app_handler(signum: int, _frame: Any) -> None:
            apps.append(signum)

        signal.signal(signal.SIGTERM, app_handler)
        assert drains.armed(coord) is None
        assert health_document(coord)["drain"] == {"armed": False, "via": None}
        assert metric(parse_metrics(metrics.render()), "coordinator_drain_armed") == 0
        drains.detach(coord)
        assert signal.getsignal(signal.SIGTERM) is app_handler
    finally:
        drains.detach(coord)


async def test_restoring_a_loop_handler_keeps_one_installed_after_ours() -> None:
    loop = asyncio.get_running_loop()
    server: list[str] = []
    app: list[str] = []
    loop.add_signal_handler(signal.SIGUSR2, server.append, "server")
    try:
        taken = signals.take(loop, signal.SIGUSR2, lambda: None)
        assert taken is not None and taken.installed() is True
        loop.add_signal_handler(signal.SIGUSR2, app.append, "app")  # the app's, later
        assert taken.installed() is False
        taken.restore()
        os.kill(os.getpid(), signal.SIGUSR2)
        await until(lambda: app)
        assert server == []  # not put back over the app's
    finally:
        loop.remove_signal_handler(signal.SIGUSR2)


async def test_an_entry_point_takes_nothing_over_and_an_app_handler_disarms_it_visibly(
        sigterm, monkeypatch) -> None:
    """With DrainingServer (its handle_exit installed by uvicorn's capture_signals) the
    gate takes no signal over: health names the entry point. An application's own
    SIGTERM handler, installed later, makes SIGTERM miss the server: armed false, as
    with the fallback's takeover."""
    import uvicorn

    from coordinator.ops.health import health_document
    from coordinator.ops.uvicorn_server import VIA, DrainingServer

    _gate, coord, app = gate_for()
    drains = Drains()
    monkeypatch.setattr("coordinator.ops.health.DRAINS", drains)
    server = DrainingServer(uvicorn.Config(app))
    with server.capture_signals(), drains.explicit(VIA, server._armed):
        drains.attach(coord)
        try:
            assert signal.getsignal(signal.SIGTERM) == server.handle_exit  # not ours: none
            assert health_document(coord)["drain"] == {"armed": True, "via": VIA}
            signal.signal(signal.SIGTERM, lambda _signum, _frame: None)  # the app's own
            assert health_document(coord)["drain"] == {"armed": False, "via": None}
        finally:
            drains.detach(coord)
