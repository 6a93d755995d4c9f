"""``ConnectionGate(..., startup=...)``: the gate runs the lifecycle of an app that has no
lifespan of its own (Django Channels): at the server's lifespan, which the app never
sees, or, under a server that sends none (daphne), at the first scope. And the closes a
server refuses (daphne's autobahn sends no 1012 or 1013) go as their twins, never 1011."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest

from coordinator.gate.gate import ConnectionGate
from coordinator.gate.rejection import close
from coordinator.instance.drain import DRAINS
from tests.support import App, gate_for


def lifecycle_gate(monkeypatch: pytest.MonkeyPatch) -> tuple[ConnectionGate, App, list[str]]:
    """A gate with ``startup=``; the coordinator's start and stop recorded, not run."""
    _gate, coord, app = gate_for()
    said: list[str] = []

    async def start() -> None:
        said.append("start")

    async def stop() -> None:
        said.append("stop")

    async def startup() -> None:
        said.append("startup")

    monkeypatch.setattr(coord, "start", start)
    monkeypatch.setattr(coord, "stop", stop)
    monkeypatch.setattr(DRAINS, "attach", lambda c: said.append("drain armed"))
    monkeypatch.setattr(DRAINS, "detach", lambda c: said.append("drain disarmed"))
    return ConnectionGate(app, coord, startup=startup), app, said


async def test_the_gate_answers_the_lifespan_and_runs_the_lifecycle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gate, app, said = lifecycle_gate(monkeypatch)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[str] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message["type"])

    await inbox.put({"type": "lifespan.startup"})
    await inbox.put({"type": "lifespan.shutdown"})
    await gate({"type": "lifespan"}, inbox.get, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert said == ["start", "drain armed", "startup", "drain disarmed", "stop"]
    assert app.calls == []  # the app behind never sees a lifespan


async def test_without_a_lifespan_the_first_scope_starts_it_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gate, app, said = lifecycle_gate(monkeypatch)

    async def nothing() -> dict[str, Any]:
        return {"type": "http.request"}

    async def ignore(message: Any) -> None:
        pass

    scope = {"type": "http", "path": "/health/live", "method": "GET", "headers": []}
    await asyncio.gather(*(gate(dict(scope), nothing, ignore) for _ in range(3)))
    await asyncio.sleep(0)  # the startup task's first turn
    assert said == ["start", "drain armed", "startup"]
    assert len(app.calls) == 3


async def test_a_refused_close_code_goes_as_its_private_twin() -> None:
    sent: list[int] = []

    async def autobahn(message: MutableMapping[str, Any]) -> None:  # daphne's send, as it raises
        if not (message["code"] == 1000 or 3000 <= message["code"] <= 4999):
            raise Exception(f"invalid close code {message['code']}")
        sent.append(message["code"])

    await close(autobahn, 1012, "{}")
    await close(autobahn, 1013, "{}")
    assert sent == [4012, 4013]
    with pytest.raises(Exception, match="invalid close code 1011"):
        await close(autobahn, 1011, "{}")


async def test_the_startup_is_the_coordinators_task_and_its_stop_ends_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Under daphne no lifespan shutdown comes to end the startup: the drain's end stops
    the coordinator, whose stop cancels its tasks, the startup among them."""
    _gate, coord, app = gate_for()

    async def start() -> None:
        pass

    async def forever() -> None:
        await asyncio.Event().wait()  # phases that are still running

    monkeypatch.setattr(coord, "start", start)
    monkeypatch.setattr(DRAINS, "attach", lambda c: None)
    gate = ConnectionGate(app, coord, startup=forever)
    assert gate.lifecycle is not None
    await gate.lifecycle.begin()
    task = gate.lifecycle._task
    assert task is not None and not task.done()
    await coord.tasks.cancel()  # what coord.stop() does
    assert task.cancelled()
