"""coordinator/_compat/servers.py: the servers' internals are used only with the versions
the suite ran them with; with any other, the public behaviour (nothing taken over, nothing
wrapped), said once in the log."""

from __future__ import annotations

import asyncio
import logging
import signal

import pytest

from coordinator._compat import servers
from coordinator.instance import signals


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "_warned", set())


def untested(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setitem(servers.TESTED, name, ((0, 0), (0, 0)))


def test_the_installed_servers_are_the_tested_ones() -> None:
    """A lock that moves a server to a version the suite has not run breaks here first,
    not silently in production (where the drain would fall back, logged)."""
    for name in ("uvloop", "rloop", "granian", "hypercorn", "python"):
        low, high = servers.TESTED[name]
        found = servers.version_of(name)
        assert found is None or low <= found <= high, (name, found)


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
