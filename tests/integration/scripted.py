"""A scripted WebSocket server under a real uvicorn, for the client helper and HAProxy.

Each handshake is answered as the script says: the gate's own rejection (HTTP 503 +
Retry-After, or accept-and-close 1013/1012 with the JSON reason, through the gate's own
``reject``), a load balancer's bare 503, a close with a code, a hold, a silent
connection, or (once the script is used up) a chat. Plain HTTP requests (a load
balancer's health check) get 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from coordinator.middleware import reject
from tests.support import async_wait_until, free_port


class Scripted:
    """Answers the n-th handshake with ``script[n]`` (then chats), noting arrival times;
    with ``forever``, every handshake with ``script[0]``."""

    def __init__(self, *script: tuple[Any, ...], forever: bool = False) -> None:
        self.script = list(script)
        self.forever = forever
        self.arrivals: list[float] = []
        self.disconnects = 0  # "silent" connections the client has closed

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        assert scope["type"] == "websocket"
        self.arrivals.append(time.monotonic())
        if self.forever:
            action, *args = self.script[0]
        else:
            action, *args = self.script.pop(0) if self.script else ("chat",)
        if action == "gate":  # the gate's own rejection: (reason, retry_after, mode)
            await reject(scope, receive, send, *args)
            return
        await receive()  # websocket.connect
        if action == "bare503":  # a load balancer with no server up
            await send({"type": "websocket.http.response.start", "status": 503, "headers": []})
            await send({"type": "websocket.http.response.body", "body": b""})
            return
        if action == "hold":
            await asyncio.sleep(args[0])
        await send({"type": "websocket.accept"})
        if action == "close":
            await send({"type": "websocket.close", "code": args[0]})
            return
        if action == "silent":  # sends the given frames (none by default), never answers
            for frame in args:
                await send({"type": "websocket.send", "text": frame})
            while (await receive())["type"] != "websocket.disconnect":
                pass
            self.disconnects += 1
            return
        await send({"type": "websocket.send", "text": json.dumps({"type": "welcome"})})
        if action == "welcome_then_close":  # (code, reason JSON): a drain, a maximum age
            await send({"type": "websocket.close", "code": args[0],
                        "reason": json.dumps(args[1])})
            return
        while (await receive())["type"] != "websocket.disconnect":
            pass


@contextlib.asynccontextmanager
async def serving(app: Scripted, port: int | None = None) -> AsyncIterator[str]:
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, ws="wsproto",
                                           lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        await async_wait_until(lambda: server.started or task.done(), 10, what="uvicorn")
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        server.should_exit = True
        await task
