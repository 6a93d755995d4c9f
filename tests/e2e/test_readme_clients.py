"""The guide's two client-helper examples, run exactly as printed (extracted from
docs/guide.md, saved as files, run with this virtualenv's python) against a real backend
that is still starting: each connects through the gate's hold and prints what the guide
says it prints."""

from __future__ import annotations

import ast
import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    RedisServer,
    async_wait_until,
    backend_env,
    doc_blocks,
    reach_services,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

def examples() -> dict[str, str]:
    """The section's Python blocks, by the client function each imports."""
    found = {}
    for block in doc_blocks("docs/guide.md", "Client helper", "python"):
        (imported,) = [n for n in ast.walk(ast.parse(block))
                       if isinstance(n, ast.ImportFrom) and n.module == "coordinator.client"]
        found[",".join(sorted(a.name for a in imported.names))] = block
    return found


def test_the_section_has_the_two_examples() -> None:
    assert set(examples()) == {"GaveUp,RetryPolicy,connect", "sessions"}


async def starting_backend(start_backend: Any, url: str, namespace: str) -> Any:
    backend = start_backend(backend_env(redis_url=url, namespace=namespace,
                                        BACKEND_PHASE_DURATIONS="services=2"), wait=False)
    await reach_services(backend)  # a client now is held until ready
    return backend


async def test_the_connect_example_is_held_then_chats_and_prints_its_attempts(
        tmp_path: Path, redis_server: RedisServer, namespace: str, start_backend: Any) -> None:
    script = tmp_path / "client.py"
    script.write_text(examples()["GaveUp,RetryPolicy,connect"])
    backend = await starting_backend(start_backend, redis_server.url, namespace)
    proc = await asyncio.to_thread(subprocess.run, [sys.executable, str(script),
                                                    backend.ws_url],
                                   capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    welcome, echo, attempts = proc.stdout.splitlines()
    assert json.loads(welcome)["type"] == "welcome", proc.stdout
    assert json.loads(echo) == {**json.loads(echo), "type": "echo", "text": "hello"}
    # One handshake, held until ready (not refused and retried).
    assert attempts.startswith("[Attempt(number=1, outcome='connected'") and \
        attempts.count("Attempt(") == 1, attempts


async def test_the_sessions_example_prints_the_welcome_of_each_session(
        tmp_path: Path, redis_server: RedisServer, namespace: str, start_backend: Any) -> None:
    script = tmp_path / "follow.py"
    script.write_text(examples()["sessions"])
    backend = await starting_backend(start_backend, redis_server.url, namespace)
    proc = subprocess.Popen([sys.executable, str(script), backend.ws_url],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        lines.extend(line.rstrip("\n") for line in proc.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        await async_wait_until(lambda: lines, 30, what="the first session's welcome")
        assert json.loads(lines[0])["type"] == "welcome", lines
    finally:
        proc.kill()  # it follows the service for as long as it runs
        proc.wait(5)
        reader.join(5)
        assert proc.stdout is not None
        proc.stdout.close()
