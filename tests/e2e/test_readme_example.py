"""The README's "Using the gate in your own service" example, run as written: its phases
are placeholders (``...``), so the test gives the `services` phase the one thing a real
service's has, a duration (it lasts until the test ends it), and shows the example
holding a handshake through it and releasing it when the phase completes."""

from __future__ import annotations

import asyncio
import re
import types

import pytest
import uvicorn
import websockets
from fastapi import WebSocket

from tests.support import ROOT, async_wait_until, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

SERVICES_PLACEHOLDER = 'async with coord.phase("services"): ...'


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Using the gate in your own service"):]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "the section has a Python example"
    return found.group(1)


async def test_the_readme_example_holds_a_handshake_until_services_completes(
        redis_server, namespace, monkeypatch):
    monkeypatch.setenv("COORD_REDIS_URL", redis_server.url)
    monkeypatch.setenv("COORD_NAMESPACE", namespace)
    monkeypatch.setenv("COORD_ENVIRONMENT", "test")
    source = readme_example()
    assert source.count(SERVICES_PLACEHOLDER) == 1, source
    source = source.replace(SERVICES_PLACEHOLDER,
                            'async with coord.phase("services"): await services_done.wait()')
    module = types.ModuleType("readme_example")
    module.services_done = asyncio.Event()  # type: ignore[attr-defined]
    exec(compile(source, "README.md", "exec"), module.__dict__)

    @module.api.websocket("/ws")
    async def chat(ws: WebSocket) -> None:  # the example leaves the routes to the reader
        await ws.accept()
        await ws.send_text("hello")
        await ws.close()

    async def first_frame(url: str) -> str | bytes:
        async with websockets.connect(url, open_timeout=30) as ws:
            return await ws.recv()

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(module.app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve())
    try:
        await async_wait_until(lambda: server.started, 10, what="the example to serve")
        await async_wait_until(lambda: module.coord.current_phase == "services", 10,
                               what="its services phase")
        client = asyncio.create_task(first_frame(f"ws://127.0.0.1:{port}/ws"))
        await async_wait_until(lambda: len(module.app.state.queue) == 1 or client.done(), 10,
                               what="the handshake to be held")
        assert not client.done(), "answered while the services phase still ran"
        assert not module.coord.is_ready
        module.services_done.set()  # the services phase completes: the hold is released
        assert await asyncio.wait_for(client, 10) == "hello"
        assert module.coord.is_ready
        assert module.app.state.admitted == {"after_hold": 1}
        assert module.coord.redis_ok
    finally:
        module.services_done.set()
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
