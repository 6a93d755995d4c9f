"""coordinator/_compat/servers.py: the servers' internals are used only with the versions
the suite ran them with; with any other, the public behaviour (nothing taken over, nothing
wrapped), said once in the log."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import pytest
import uvicorn

from coordinator._compat import servers
from coordinator.instance import signals


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "_warned", set())


def untested(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setitem(servers.TESTED, name, ((0, 0), (0, 0)))


async def noop_app(scope: Any, receive: Any, send: Any) -> None:
    pass


def test_the_installed_servers_are_the_tested_ones() -> None:
    """A lock that moves a server to a version the suite has not run breaks here first,
    not silently in production (where the drain would fall back, logged)."""
    for name in ("uvloop", "rloop", "granian", "hypercorn", "uvicorn", "python"):
        low, high = servers.TESTED[name]
        found = servers.version_of(name)
        assert found is None or low <= found <= high, (name, found)


async def test_uvicorn_shutdown_runs_the_drain_first_then_its_own() -> None:
    server = uvicorn.Server(uvicorn.Config(noop_app))
    order: list[str] = []

    async def own(sockets: Any = None) -> None:
        order.append("uvicorn")

    async def before() -> None:
        order.append("drain")

    server.shutdown = own  # type: ignore[method-assign]
    unwrap = servers.wrap_uvicorn_shutdown(server.handle_exit, before)
    assert unwrap is not None
    await server.shutdown(sockets=None)
    assert order == ["drain", "uvicorn"]
    unwrap()
    assert "shutdown" not in vars(server)


async def test_an_untested_uvicorn_is_left_alone_and_said_once(monkeypatch, caplog) -> None:
    untested(monkeypatch, "uvicorn")
    server = uvicorn.Server(uvicorn.Config(noop_app))

    async def before() -> None:
        raise AssertionError("not wrapped")

    with caplog.at_level(logging.WARNING, "coordinator.compat"):
        assert servers.wrap_uvicorn_shutdown(server.handle_exit, before) is None
        assert servers.wrap_uvicorn_shutdown(server.handle_exit, before) is None
    assert "shutdown" not in vars(server)
    (record,) = caplog.records
    assert "uvicorn" in record.getMessage() and "Server.shutdown" in record.getMessage()


def test_what_is_not_a_uvicorn_server_is_not_wrapped() -> None:
    async def before() -> None:
        pass

    assert servers.wrap_uvicorn_shutdown(lambda _s, _f: None, before) is None
    assert servers.wrap_uvicorn_shutdown(None, before) is None


async def test_an_untested_python_leaves_asyncios_signal_table_alone(monkeypatch,
                                                                     caplog) -> None:
    untested(monkeypatch, "python")
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR2, lambda: None)
    try:
        with caplog.at_level(logging.WARNING, "coordinator.compat"):
            assert servers.loop_signal_handler(loop, signal.SIGUSR2) is None
            assert signals.take(loop, signal.SIGUSR2, lambda: None) is None
        (record,) = caplog.records
        assert record.getMessage().startswith("python ")
    finally:
        loop.remove_signal_handler(signal.SIGUSR2)
