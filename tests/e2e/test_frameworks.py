"""The frameworks users bring, end to end: docs/guide.md's Frameworks recipes (Litestar,
Quart, Django Channels), each saved exactly as printed and served by the command its
section prints (Channels under daphne, which sends no lifespan, and under uvicorn, whose
lifespan Channels refuses), with a real Redis and real WebSocket clients.

One server per case, shared by its steps: clients that arrive during ``services`` are
held and welcomed once ready (never 1011), a client after ready is welcomed at once, and
a SIGTERM drains: a newcomer refused with 503 and the open ones closed with 1012; under
daphne, which offers no denial response and sends no 1012, the newcomer accepted and
closed with 4012, as the open ones are; the server gone. Without the gate
(``COORD_GATE=off``) the same early clients reach a handler whose dependencies do not
exist yet: the failure the gate prevents, reproduced for each framework.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets import ConnectionClosed
from websockets.asyncio.client import ClientConnection, connect

from tests.support import (
    CLOSE,
    HTTP,
    ROOT,
    BackendProcess,
    RedisServer,
    assert_chatted,
    async_wait_until,
    chat,
    storm,
    tally,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

HELD = 3
# What the Channels recipe leaves to the project: a settings module (nothing in it is the
# gate's) and an empty URLconf for Django's own views.
DJANGO_PROJECT = {
    "chatsite/__init__.py": "",
    "chatsite/settings.py": 'SECRET_KEY = "test"\nDEBUG = False\nALLOWED_HOSTS = ["*"]\n'
                            'INSTALLED_APPS = ["channels"]\nROOT_URLCONF = "chatsite.urls"\n',
    "chatsite/urls.py": "urlpatterns = []\n",
}


@dataclass(frozen=True)
class Case:
    section: str  # the "### " heading in the guide's Frameworks section
    module: str  # where the recipe's Python block is saved
    command: int  # which line of the section's sh block serves it
    # The drain's close: 1012, or under daphne its twin 4012 (autobahn sends no 1012), where
    # a newcomer is accepted and closed too (no denial response: no 503).
    drain_close: int = 1012
    # How the server ends a connection whose handler raised after accepting it.
    crash_close: int = 1011
    crash_logged: bool = True  # the handler's AssertionError in the server's log

    def files(self) -> dict[str, str]:
        return {self.module: self.python(), **(DJANGO_PROJECT if "/" in self.module else {})}

    def python(self) -> str:
        (block,) = blocks(self.section, "python")
        return block

    def argv(self) -> list[str]:
        """The printed command, from this virtualenv, on a placeholder port."""
        (sh,) = blocks(self.section, "sh")
        words = shlex.split(sh.strip().splitlines()[self.command])
        program = str(Path(sys.executable).parent / words[0])
        return [program, *("{port}" if w == "8000" else w for w in words[1:])]


CASES = {
    "litestar": Case("Litestar", "main.py", 0, crash_close=4500,  # 4000 + HTTP 500
                     crash_logged=False),  # Litestar logs exceptions only when debugging
    "quart": Case("Quart", "main.py", 0, crash_close=1000),  # a normal close, the error logged
    "channels-daphne": Case("Django Channels", "chatsite/asgi.py", 0, drain_close=4012),
    "channels-uvicorn": Case("Django Channels", "chatsite/asgi.py", 1, crash_close=1006),
}


def blocks(subsection: str, language: str) -> list[str]:
    """The fenced ``language`` blocks of ``### subsection`` of the guide's Frameworks."""
    text = (ROOT / "docs" / "guide.md").read_text()
    start = text.index("\n## Frameworks\n")
    section = text[start:text.index("\n## ", start + 1)]
    begin = section.index(f"\n### {subsection}\n")
    end = section.find("\n### ", begin + 1)
    body = section[begin:end if end >= 0 else len(section)]
    return [b for lang, b in re.findall(r"```(\w*)\n(.*?)```", body, re.S) if lang == language]


def service(case: Case, tmp_path: Path, redis_server: RedisServer, namespace: str,
            **env: str) -> BackendProcess:
    for name, text in case.files().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return BackendProcess({"COORD_REDIS_URL": redis_server.url, "COORD_NAMESPACE": namespace,
                           "COORD_ENVIRONMENT": "test", **env},
                          tmp_path / "service.log", argv=case.argv(), cwd=tmp_path)


def ready_doc(service: BackendProcess) -> dict[str, Any]:
    body = service.get("/health/ready")[1]
    return body if isinstance(body, dict) else {}


async def reach_services(service: BackendProcess) -> None:
    await async_wait_until(lambda: ready_doc(service).get("phase") == "services", 15,
                           what="the services phase")


async def chat_and_stay(url: str) -> tuple[dict[str, Any], dict[str, Any], ClientConnection]:
    ws = await connect(url, open_timeout=30)
    welcome = json.loads(await ws.recv())
    await ws.send("hi")
    return welcome, json.loads(await ws.recv()), ws


async def closed(ws: ClientConnection) -> int | None:
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


@pytest.mark.parametrize("name", list(CASES))
async def test_early_clients_are_held_then_served_and_sigterm_drains(
        name: str, tmp_path: Path, redis_server: RedisServer, namespace: str) -> None:
    case = CASES[name]
    proc = service(case, tmp_path, redis_server, namespace, COORD_DRAIN_GRACE="2")
    proc.start()
    sessions: list[tuple[dict[str, Any], dict[str, Any], ClientConnection]] = []
    try:
        await reach_services(proc)
        early = [asyncio.create_task(chat_and_stay(proc.ws_url)) for _ in range(HELD)]
        await async_wait_until(lambda: ready_doc(proc).get("queue", {}).get("depth") == HELD,
                               10, what="every early client held")
        assert not any(task.done() for task in early)  # held: neither accepted nor refused
        sessions = await asyncio.wait_for(asyncio.gather(*early), 15)
        ready = ready_doc(proc)
        assert ready["state"] == "ready" and ready["admitted"] == {"after_hold": HELD}
        for welcome, echo, _ws in sessions:
            assert welcome == {"type": "welcome", "instance": ready["instance"]}
            assert echo == {"type": "echo", "text": "hi"}
        assert_chatted(await chat(proc.ws_url), ready["instance"])  # after ready: at once
        assert ready_doc(proc)["admitted"] == {"after_hold": HELD, "immediate": 1}

        proc.signal(signal.SIGTERM)
        await async_wait_until(lambda: ready_doc(proc).get("state") == "draining", 5,
                               what="draining")
        fresh = await chat(proc.ws_url)
        if case.drain_close == 1012:
            assert (fresh.kind, fresh.status, fresh.rejection) == (HTTP, 503, "draining"), fresh
        else:
            assert (fresh.kind, fresh.code) == (CLOSE, case.drain_close), fresh
        codes = await asyncio.wait_for(asyncio.gather(*(closed(ws) for *_, ws in sessions)), 10)
        assert codes == [case.drain_close] * HELD
        status = await asyncio.to_thread(proc.wait_exit, timeout=10)
        # uvicorn re-raises the SIGTERM it was handed after its shutdown (docs/guide.md, Drain)
        assert status in (0, -signal.SIGTERM), (status, proc.log())
        log = proc.log()
        assert "SIGTERM will drain instance" in log and "drained: " in log, log
        assert "Traceback" not in log and "1011" not in log, log
    finally:
        for *_, ws in sessions:
            await ws.close()
        proc.kill()


@pytest.mark.parametrize("name", list(CASES))
async def test_without_the_gate_early_clients_reach_a_handler_that_fails(
        name: str, tmp_path: Path, redis_server: RedisServer, namespace: str) -> None:
    """What the gate prevents, so that the test above can fail: COORD_GATE=off, the same
    clients during ``services``; each handler runs before what it needs exists, fails its
    assert and the connection ends unwelcomed, each framework's way: 1011 under daphne,
    Litestar's 4500, Quart's 1000, no close frame at all (1006) for Channels under uvicorn.
    """
    case = CASES[name]
    proc = service(case, tmp_path, redis_server, namespace, COORD_GATE="off")
    proc.start()
    try:
        await reach_services(proc)
        outcomes = await storm(proc.ws_url, HELD)
        assert ready_doc(proc)["state"] == "starting"  # all of it before services ended
        assert tally(outcomes) == {f"close {case.crash_close}": HELD}, tally(outcomes)
        if case.crash_logged:
            await async_wait_until(lambda: proc.log().count("AssertionError") >= HELD, 5,
                                   what="every handler's assert failing in the log")
    finally:
        proc.kill()
