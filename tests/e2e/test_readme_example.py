"""The README's "Using the gate in your own service", run as a user runs it: its Python
block saved as ``main.py``, exactly as printed, served by the command the next block
prints (``uvicorn main:app``, and the ``fastapi run main.py`` its comment offers), on a
free port instead of 8000. Early clients are held and welcomed once ``services``
completes; the health routes answer; the coordinator's logs show without any setup; a
SIGTERM drains it cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets import ConnectionClosed
from websockets.asyncio.client import connect

from tests.support import (
    HTTP,
    ROOT,
    BackendProcess,
    RedisServer,
    async_wait_until,
    chat,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

SECTION = "## Using the gate in your own service"
HELD = 3


def section_blocks() -> list[tuple[str, str]]:
    """(language, text) of each fenced block of the section, in order."""
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    section = text[start:text.index("\n## ", start + len(SECTION))]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.S)


def commands() -> list[list[str]]:
    """The serving commands the section prints: the line, and the one in its comment."""
    (line,) = [text for lang, text in section_blocks() if lang == "sh" and "main:app" in text]
    command, _, comment = line.strip().partition("#")
    alternative = comment.split("or:", 1)[1]
    return [shlex.split(command), shlex.split(alternative)]


def argv(command: list[str]) -> list[str]:
    """The printed command, run from this virtualenv on a placeholder port."""
    program = str(Path(sys.executable).parent / command[0])
    return [program, *("{port}" if arg == "8000" else arg for arg in command[1:])]


@pytest.mark.parametrize("command", commands(), ids=lambda c: c[0])
async def test_the_own_service_example_holds_releases_serves_health_and_drains(
        command: list[str], tmp_path: Path, redis_server: RedisServer,
        namespace: str) -> None:
    (main,) = [text for lang, text in section_blocks() if lang == "python"]
    (tmp_path / "main.py").write_text(main)
    env = {"COORD_REDIS_URL": redis_server.url, "COORD_NAMESPACE": namespace,
           "COORD_DRAIN_GRACE": "2"}
    service = BackendProcess(env, tmp_path / "service.log", argv=argv(command), cwd=tmp_path)
    service.start()
    try:
        await async_wait_until(lambda: _phase(service) == "services", 15, what="services")
        held = [asyncio.create_task(_chat_and_stay(service.ws_url)) for _ in range(HELD)]
        await async_wait_until(lambda: _queue_depth(service) == HELD, 10,
                               what="every early client held")
        assert service.get("/health/startup")[0] == 503
        assert service.get("/health/ready")[0] == 503
        sessions = await asyncio.wait_for(asyncio.gather(*held), 15)
        for welcome, echo, _ws in sessions:
            assert welcome["type"] == "welcome" and echo == {"type": "echo", "text": "hi"}
        assert service.get("/health/startup")[0] == 200
        status, body = service.get("/health/ready")
        assert status == 200 and body["state"] == "ready" and body["phases_total"] == 3
        assert body["admitted"] == {"after_hold": HELD} and body["redis"] == "ok"
        log = service.log()
        assert "coordinator: redis link up" in log, log
        assert f"releasing {HELD} held connection(s)" in log, log

        service.signal(signal.SIGTERM)
        await async_wait_until(lambda: service.get("/health/ready")[0] == 503, 5,
                               what="draining")
        fresh = await chat(service.ws_url)
        assert fresh.kind == HTTP and fresh.status == 503 and fresh.rejection == "draining"
        for _welcome, _echo, ws in sessions:
            code, reason = await asyncio.wait_for(_closed(ws), 10)
            assert code == 1012 and reason["reason"] == "draining"
        await asyncio.to_thread(service.wait_exit, timeout=10)
        assert "SIGTERM will drain instance" in service.log()
    finally:
        service.kill()


@pytest.mark.parametrize("command", commands(), ids=lambda c: c[0])
def test_a_bad_value_stops_the_example_with_the_one_line_the_readme_prints(
        command: list[str], tmp_path: Path) -> None:
    """The section's console block: a bad COORD_* value, the command, the one line on
    stderr (no traceback), exit status 1; under `fastapi run` too."""
    (block,) = [text for lang, text in section_blocks()
                if lang == "console" and "configuration error" in text]
    prompt, printed = block.strip().splitlines()
    words = shlex.split(prompt.removeprefix("$ "))
    assignments = [w for w in words if re.fullmatch(r"[A-Z_]+=.*", w)]
    assert words[len(assignments):] == ["uvicorn", "main:app", "--port", "8000"]
    (main,) = [text for lang, text in section_blocks() if lang == "python"]
    (tmp_path / "main.py").write_text(main)
    env = {**os.environ, **dict(a.split("=", 1) for a in assignments)}
    done = subprocess.run([arg.replace("{port}", "1") for arg in argv(command)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr.strip()) == (1, printed), done.stderr


def _phase(service: BackendProcess) -> Any:
    body = service.get("/health/ready")[1]
    return body.get("phase") if isinstance(body, dict) else None


def _queue_depth(service: BackendProcess) -> Any:
    body = service.get("/health/ready")[1]
    return body["queue"]["depth"] if isinstance(body, dict) else None


async def _chat_and_stay(url: str) -> tuple[dict[str, Any], dict[str, Any], Any]:
    ws = await connect(url, open_timeout=30)
    welcome = json.loads(await ws.recv())
    await ws.send("hi")
    return welcome, json.loads(await ws.recv()), ws


async def _closed(ws: Any) -> tuple[int | None, Any]:
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as exc:
        return (exc.rcvd.code, json.loads(exc.rcvd.reason)) if exc.rcvd else (None, None)
