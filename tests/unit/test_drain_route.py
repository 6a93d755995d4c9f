"""The drain endpoint (coordinator.ops.drain_route) in process: a wrong token is refused
with 403 and logged at most once per LOG_INTERVAL however many arrive (anyone who reaches
the port could otherwise fill the log), each counted."""

from __future__ import annotations

import logging

import pytest

from coordinator._asgi import Message
from coordinator.instance.coordinator import Coordinator
from coordinator.ops.drain_route import DrainApp
from coordinator.settings import Settings

TOKEN = "right-token-of-24-chars!"


async def post(app: DrainApp, token: str) -> int:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/drain", "client": ("10.0.0.9", 4242),
             "headers": [(b"authorization", f"Bearer {token}".encode())]}
    await app(scope, receive, send)
    return int(sent[0]["status"])


async def test_wrong_tokens_are_refused_counted_and_logged_once_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    coord = Coordinator(Settings(instance_id="drain-route", environment="test",
                                 drain_token=TOKEN))
    app = DrainApp(coord)
    with caplog.at_level(logging.WARNING, "coordinator.drain"):
        statuses = [await post(app, f"wrong-token-number-{n:04d}") for n in range(50)]
    assert statuses == [403] * 50
    assert app.refused == 50
    warnings = [r for r in caplog.records if "wrong token" in r.getMessage()]
    assert len(warnings) == 1 and "10.0.0.9" in warnings[0].getMessage()
    assert TOKEN not in caplog.text
