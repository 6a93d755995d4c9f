"""The README's "Using the gate in your own service" example, run as written."""

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


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Using the gate in your own service"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


async def test_the_readme_example_gates_and_becomes_ready(redis_server, namespace, monkeypatch):
    monkeypatch.setenv("COORD_REDIS_URL", redis_server.url)
    monkeypatch.setenv("COORD_NAMESPACE", namespace)
    monkeypatch.setenv("COORD_ENVIRONMENT", "test")
    module = types.ModuleType("readme_example")
    exec(compile(readme_example(), "README.md", "exec"), module.__dict__)

    @module.api.websocket("/ws")
    async def chat(ws: WebSocket) -> None:  # the example leaves the routes to the reader
        await ws.accept()
        await ws.send_text("hello")
        await ws.close()

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(module.app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve())
    try:
        await async_wait_until(lambda: server.started, 10, what="the example to serve")
        await async_wait_until(lambda: module.coord.is_ready, 10, what="its phases to run")
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            assert await ws.recv() == "hello"
        assert module.app.state.admitted["immediate"] == 1
        assert module.coord.redis_ok
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
