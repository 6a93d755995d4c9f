"""Real parts for tests and benchmarks: redis-server, backend and haproxy processes on
free ports, and waits.

Every wait has a deadline and polls a condition; nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02,
               what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def async_wait_until(predicate: Callable[[], Any | Awaitable[Any]], timeout: float,
                           interval: float = 0.02, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


class RedisServer:
    """A redis-server of the test's own, on a free port; killable and restartable."""

    def __init__(self, port: int | None = None, extra: tuple[str, ...] = (),
                 binary: str = "redis-server", cwd: Path | None = None) -> None:
        if shutil.which(binary) is None:
            raise RuntimeError(f"{binary} is not found (.ci/run installs it)")
        self.port = port or free_port()
        self.extra = extra
        self.binary = binary
        self.cwd = cwd  # its files (a replica's dump.rdb); None: a directory of its own
        self._own_dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def dir(self) -> Path:
        """Where the server keeps its files: never the tests' working directory, where a
        replica's dump.rdb would be loaded by the next server started there."""
        if self.cwd is not None:
            return self.cwd
        assert self._own_dir is not None, "not started"
        return self._own_dir

    def start(self) -> RedisServer:
        if self.cwd is None and (self._own_dir is None or not self._own_dir.exists()):
            self._own_dir = Path(tempfile.mkdtemp(prefix="coord-redis-"))
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir)
        wait_until(lambda: port_open(self.port), 10, what=f"redis-server on {self.port}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        wait_until(lambda: not port_open(self.port), 10, what="redis-server to stop")
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def freeze(self) -> None:
        """SIGSTOP: a Redis that hangs. Its connections stay open and the kernel still
        completes new ones (up to the listen backlog), but nothing is ever answered."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: the frozen Redis answers again, its data intact."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()


BACKEND_COMMAND = (sys.executable, "-m", "backend")


class BackendProcess:
    """``python -m backend`` as users run it, with its log kept for the test report.

    ``argv`` runs it under another server instead (``{port}`` is replaced by the port),
    e.g. ``("hypercorn", "-b", "127.0.0.1:{port}", "backend.asgi:app")``. The process leads
    a process group of its own: signals go to it alone, as a platform sends them to a
    container's first process, and :meth:`kill` takes its workers down with it.
    """

    def __init__(self, env: Mapping[str, str], log_path: Path, port: int | None = None,
                 argv: Sequence[str] = BACKEND_COMMAND, cwd: Path = ROOT) -> None:
        self.port = port or free_port()
        self.cwd = cwd
        self.log_path = log_path
        self.argv = [arg.replace("{port}", str(self.port)) for arg in argv]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "HOST": "127.0.0.1",
                    "PORT": str(self.port), **env}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> BackendProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait_exit
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            wait_until(lambda: self.get("/health/live")[0] == 200 or self._died(), 20,
                       what=f"backend on {self.port} to listen")
            if self._died():
                raise RuntimeError(f"backend exited at start:\n{self.log()}")
        return self

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, Any]:
        import json
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=timeout) as resp:
                body = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        except OSError:
            return 0, None
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def wait_ready(self, timeout: float = 30) -> None:
        wait_until(lambda: self.get("/health/ready")[0] == 200, timeout,
                   what=f"backend on {self.port} to be ready")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def terminate(self) -> int:
        return self.wait_exit(signal.SIGTERM)

    def kill(self) -> int:
        return self.wait_exit(signal.SIGKILL)

    def wait_exit(self, sig: int | None = None, timeout: float = 20) -> int:
        assert self.proc is not None
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError):  # workers left behind, if any
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# -- HAProxy in front of real backends ---------------------------------------------------------

HAPROXY_CONFIG = ROOT / "deploy" / "haproxy.cfg"


def haproxy_env(ports: Sequence[int], port: int, sock: Path) -> dict[str, str]:
    """The variables deploy/haproxy.cfg reads (docker-compose.yml sets the same): the
    instances on 127.0.0.1 at ``ports`` (three), HAProxy listening on ``port``."""
    env = {f"BACKEND_{i + 1}": f"127.0.0.1:{p}" for i, p in enumerate(ports)}
    return {**env, "HAPROXY_BIND": f"127.0.0.1:{port}", "HAPROXY_STATS_SOCKET": str(sock)}


class HAProxy:
    """deploy/haproxy.cfg run by a real ``haproxy`` with ``env`` (BACKEND_1..3,
    HAPROXY_BIND, HAPROXY_STATS_SOCKET, ...), its output in ``log``."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.sock = Path(env["HAPROXY_STATS_SOCKET"])
        self.port = int(env["HAPROXY_BIND"].rsplit(":", 1)[1])
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen([shutil.which("haproxy") or "haproxy", "-db", "-f",
                                      str(HAPROXY_CONFIG)], env={**os.environ, **env},
                                     stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: self.sock.exists() or self.proc.poll() is not None, 10,
                       what="haproxy's stats socket")
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited at start:\n{log.read_text()}")
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` on the admin socket: server name -> its row."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.sock))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
        return {r["svname"]: r for r in rows if r["pxname"] == "instances"}

    def server(self, index: int) -> dict[str, str]:
        return self.stats()[f"instance-{index + 1}"]

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        finally:
            self._log.close()
