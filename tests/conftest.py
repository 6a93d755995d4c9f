from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import BackendProcess, CliProcess, RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session; tests use distinct namespaces on it."""
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for this test alone, free to kill and restart."""
    server = RedisServer().start()
    yield server
    with contextlib.suppress(Exception):
        server.kill()


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    name = request.node.name.replace("[", "-").replace("]", "")
    return ("t-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in name))[:60]


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[list[BackendProcess]]:
    """Collects the backend processes a test starts and stops them all afterwards."""
    started: list[BackendProcess] = []
    yield started
    for proc in started:
        if proc.proc is not None:
            proc.kill()  # also closes the log of one that already exited


@pytest.fixture
def start_backend(backends: list[BackendProcess], tmp_path: Path):
    def start(env: dict[str, str], wait: bool = True) -> BackendProcess:
        proc = BackendProcess({"COORD_ENVIRONMENT": "test", **env},
                              tmp_path / f"backend-{len(backends)}.log")
        backends.append(proc)
        return proc.start(wait=wait)
    return start


@pytest.fixture
def follow_cli() -> Iterator[Callable[..., CliProcess]]:
    """Starts long-running ``coordinator`` commands; kills whatever is left afterwards."""
    started: list[CliProcess] = []

    def start(*args: str, env: dict[str, str]) -> CliProcess:
        started.append(CliProcess(*args, env=env))
        return started[-1]

    yield start
    for proc in started:
        proc.kill()


def pytest_report_header() -> str:
    with os.popen("redis-server --version") as out:  # closed: waits, no ResourceWarning
        return f"redis-server: {out.read().strip()}"
