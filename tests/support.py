"""The tests' one support module: real parts (from ``harness``, shared with the
benchmarks) and the helpers only tests use.

Every wait has a deadline and polls a condition; nothing sleeps and hopes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping

from harness.chat import (
    CHAT,
    CLOSE,
    DROPPED,
    GAVE_UP,
    HTTP,
    IMPLEMENTATIONS,
    NEAR_READY_DURATIONS,
    REFUSED,
    Outcome,
    assert_chatted,
    assert_clean_rejection,
    backend_env,
    chat,
    counters,
    health,
    storm,
    tally,
    wait_for_phase,
)
from harness.processes import (
    ROOT,
    BackendProcess,
    RedisServer,
    async_wait_until,
    free_port,
    port_open,
    wait_until,
)

__all__ = [
    "BackendProcess",
    "CHAT",
    "CLOSE",
    "CliProcess",
    "DROPPED",
    "GAVE_UP",
    "HTTP",
    "IMPLEMENTATIONS",
    "NEAR_READY_DURATIONS",
    "Outcome",
    "ROOT",
    "REFUSED",
    "RedisServer",
    "assert_chatted",
    "assert_clean_rejection",
    "async_wait_until",
    "backend_env",
    "chat",
    "cli_env",
    "counters",
    "free_port",
    "health",
    "port_open",
    "run_cli",
    "storm",
    "tally",
    "wait_for_phase",
    "wait_until",
]


COORDINATOR_CLI = (sys.executable, "-m", "coordinator")


def cli_env(redis_url: str, namespace: str, **extra: str) -> dict[str, str]:
    """The environment for a ``coordinator`` command: no COORD_* leaks from the test's."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("COORD_")}
    return {**base, "COORD_REDIS_URL": redis_url, "COORD_NAMESPACE": namespace, **extra}


def run_cli(*args: str, env: Mapping[str, str],
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``coordinator ARGS`` to completion, as a user would."""
    return subprocess.run([*COORDINATOR_CLI, *args], env=dict(env), capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, check=False)


class CliProcess:
    """A long-running ``coordinator`` command (``events``, ``fleet --watch``) whose output
    is collected line by line as it arrives; ``interrupt`` is Ctrl-C."""

    def __init__(self, *args: str, env: Mapping[str, str]) -> None:
        import threading
        self.proc = subprocess.Popen([*COORDINATOR_CLI, *args], env=dict(env), cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def interrupt(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.wait(timeout)

    def wait(self, timeout: float = 10) -> int:
        """The exit status; on timeout the process is killed and TimeoutExpired raised."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise
        finally:
            self._reader.join(5)
            assert self.proc.stdout is not None and self.proc.stderr is not None
            if not self.proc.stderr.closed:
                self.proc.stdout.close()
                self.stderr = self.proc.stderr.read()
                self.proc.stderr.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.wait(5)
