"""What every benchmark shares: its own redis-server and server processes, a light
WebSocket handshake client, Redis command and round-trip counting, and the report.

Every figure a benchmark prints goes through :class:`Report`; a comparison with its
baseline is one ``ratio`` line (the smoke tests look for them), for example::

    ratio fast_path.throughput = 0.991  goal >= 0.97  met  (gated 612/s vs bare 618/s)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Self

import redis.asyncio as redis
import redis.utils as redis_utils
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser, _AsyncRESP3Parser

from coordinator._compat import redispy
from harness.processes import ROOT, RedisServer, free_port, wait_until

__all__ = [
    "PARSERS", "ROOT", "BenchServer", "CountingConnection", "Handshake", "LineProcess",
    "RedisServer", "Report",
    "command_calls", "commands_delta", "free_port", "http_json", "machine", "open_handshakes",
    "parse_args", "parser_in_use", "pct", "reply_parser", "rss_kib", "run_benchmark",
    "use_parser", "wait_until",
]


# -- arguments and the report --------------------------------------------------------

def run_benchmark(name: str, doc: str,
                  body: Callable[[Report, RedisServer], Coroutine[Any, Any, None]],
                  argv: Sequence[str] | None = None) -> int:
    """A benchmark's ``main``: its arguments, its report, its own redis-server around
    ``body(report, redis_server)``."""
    args = parse_args(doc.splitlines()[0], argv)
    report = Report(name, args.smoke)
    redis_server = RedisServer().start()
    try:
        asyncio.run(body(report, redis_server))
    finally:
        redis_server.kill()
    return report.done()


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", "--tiny", dest="smoke", action="store_true",
                        help="run very small: checks that it works, measures nothing useful")
    return parser.parse_args(argv)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                   text=True, check=True).stdout.split()[2].removeprefix("v=")
    libraries = ", ".join(f"{name} {metadata.version(name)}"
                          for name in ("uvicorn", "websockets", "redis"))
    return (f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, redis-server {redis_version}, "
            f"{libraries} (reply parser: {reply_parser()})")


def reply_parser() -> str:
    """Which RESP parser redis-py uses: hiredis (C) when installed, else pure Python."""
    return "hiredis" if redis_utils.HIREDIS_AVAILABLE else "pure Python, hiredis not installed"


# The reply parsers an A/B compares in one process: redis-py picks hiredis at import when
# it is installed, but a connection takes whichever ``parser_class`` it is given (the
# pure-Python one is switched to RESP2 by redis-py itself on a protocol=2 connection).
PARSERS: dict[str, type] = {"hiredis": _AsyncHiredisParser, "python": _AsyncRESP3Parser}


def use_parser(client: redis.Redis, name: str) -> redis.Redis:
    """Every connection ``client``'s pool opens from now on parses replies with
    ``PARSERS[name]``; call it before the client's first command. Returns ``client``."""
    if name == "hiredis" and not redis_utils.HIREDIS_AVAILABLE:
        raise RuntimeError("hiredis is not installed: pip install 'ws-coordinator[hiredis]'")
    kwargs = client.connection_pool.connection_kwargs
    parser = PARSERS[name]
    if name == "python" and redispy.protocol_of(kwargs) == "2":  # redis-py before 8.0
        parser = _AsyncRESP2Parser
    kwargs["parser_class"] = parser
    return client


def parser_in_use(client: redis.Redis) -> str:
    """The class of the reply parser on ``client``'s pooled connections (after a command):
    a check that :func:`use_parser` took."""
    pool: Any = client.connection_pool
    names = {type(c._parser).__name__
             for c in [*pool._available_connections, *pool._in_use_connections]}
    return ", ".join(sorted(names)) or "no connection yet"


class Report:
    """Prints a benchmark's figures as it goes, and its ratios against goals."""

    def __init__(self, name: str, smoke: bool) -> None:
        self.name = name
        self.smoke = smoke
        self.missed: list[str] = []
        print(f"== {name}{' (smoke: tiny, figures meaningless)' if smoke else ''}", flush=True)

    def note(self, text: str) -> None:
        print(f"   {text}", flush=True)

    def figure(self, label: str, value: str) -> None:
        print(f"   {label}: {value}", flush=True)

    def ratio(self, key: str, value: float, op: str, goal: float | None, detail: str) -> None:
        """One comparison. ``op`` is '>=' or '<='; ``goal`` None for a figure with none."""
        if goal is None:
            verdict = "no goal"
        else:
            met = value >= goal if op == ">=" else value <= goal
            verdict = "met" if met else "MISSED"
            if not met:
                self.missed.append(key)
        goal_text = f"goal {op} {goal:g}" if goal is not None else "goal -"
        print(f"ratio {self.name}.{key} = {value:.3f}  {goal_text}  {verdict}  ({detail})",
              flush=True)

    def done(self) -> int:
        if self.missed:
            print(f"   goals missed: {', '.join(self.missed)}", flush=True)
        return 0


# -- statistics ---------------------------------------------------------------------

def pct(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the two nearest ranks."""
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


# -- processes ----------------------------------------------------------------------

def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class BenchServer:
    """``python -m bench._server`` (or another module) under uvicorn, on a free port."""

    def __init__(self, env: Mapping[str, str], name: str, module: str = "bench._server") -> None:
        self.port = free_port()
        self.module = module
        self.log_path = Path(tempfile.gettempdir()) / f"bench-{name}-{self.port}.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "HOST": "127.0.0.1",
                    "PORT": str(self.port), "COORD_ENVIRONMENT": "test", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def start(self, status_path: str = "/bench/status") -> Self:
        with open(self.log_path, "wb") as log:
            proc = self.proc = subprocess.Popen([sys.executable, "-m", self.module], cwd=ROOT,
                                                env=self.env, stdout=log,
                                                stderr=subprocess.STDOUT)
        wait_until(lambda: self.get(status_path)[0] == 200 or proc.poll() is not None,
                   30, what=f"{self.module} on {self.port}")
        if proc.poll() is not None:
            raise RuntimeError(f"{self.module} exited at start:\n{self.log()}")
        return self

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, None
        except OSError:
            return 0, None

    def status(self) -> dict[str, Any]:
        code, body = self.get("/bench/status")
        if code != 200:
            raise RuntimeError(f"server on {self.port} answered {code}:\n{self.log()[-2000:]}")
        return body

    def wait_status(self, what: str, predicate: Any, timeout: float = 30) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.status()
            return status if predicate(status) else None
        return wait_until(check, timeout, interval=0.01, what=what)

    async def until(self, what: str, predicate: Any, timeout: float = 30) -> dict[str, Any]:
        """Like :meth:`wait_status`, without blocking the event loop."""
        deadline = time.monotonic() + timeout
        while True:
            status = await http_json(self.port, "GET", "/bench/status")
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}: {status}")
            await asyncio.sleep(0.005)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LineProcess:
    """``python -m <module>`` as a child spoken to in lines: commands on its stdin, one
    answer a line on its stdout (an empty line or one starting "error" is a failure)."""

    def __init__(self, module: str, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.module = module
        self.argv = [sys.executable, "-m", module, *args]
        self.env = {**os.environ, **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Self:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, cwd=ROOT, env=self.env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        return self

    def send(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    async def read(self, timeout: float = 60) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), timeout)).decode().strip()
        if not line or line.startswith("error"):
            raise RuntimeError(f"{self.module} answered {line!r}")
        return line

    async def ask(self, command: str, timeout: float = 60) -> str:
        self.send(command)
        return await self.read(timeout)

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def http_json(port: int, method: str, path: str, timeout: float = 10) -> Any:
    """A tiny asynchronous HTTP/1.1 request, so that a control call does not block the loop
    the benchmark's clients are timed on."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
                     "Connection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        raise RuntimeError(f"{method} {path} answered {status}: {body[:200]!r}")
    return json.loads(body)


# -- a light handshake client -------------------------------------------------------

_REQUEST = ("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n")


class Handshake(asyncio.Protocol):
    """One WebSocket handshake, timed where its answer's first byte arrives.

    The benchmarks that time a 101 (release latency) or hold a thousand handshakes
    (memory) use this instead of a full client: it costs the client almost nothing, so
    the figures are the server's.
    """

    def __init__(self, path: str, port: int) -> None:
        self.request = _REQUEST.format(path=path, port=port).encode()
        self.answered: asyncio.Future[tuple[int, float]] = \
            asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self.answered.done():
            return
        at = time.time()
        self._head += data
        if b"\r\n" in self._head:
            line = self._head.split(b"\r\n", 1)[0].split()
            self.answered.set_result((int(line[1]) if len(line) > 1 else 0, at))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_result((0, time.time()))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def open_handshakes(port: int, path: str, count: int,
                          concurrency: int = 200) -> list[Handshake]:
    """Open ``count`` TCP connections and send each a handshake request; do not wait for
    the answers (the caller awaits ``answered``)."""
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(concurrency)

    async def one() -> Handshake:
        async with limit:
            _, proto = await loop.create_connection(lambda: Handshake(path, port),
                                                    "127.0.0.1", port)
            return proto

    return list(await asyncio.gather(*(one() for _ in range(count))))


# -- counting Redis work -------------------------------------------------------------

class CountingConnection(redis.Connection):
    """Counts round trips: every request a connection sends (a pipeline is one)."""

    round_trips = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.round_trips += 1
        await super().send_packed_command(command, check_health)


async def command_calls(client: redis.Redis) -> dict[str, int]:
    """INFO commandstats as {command: calls}."""
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()}


def commands_delta(before: Mapping[str, int], after: Mapping[str, int],
                   ignore: Iterable[str] = ("info",)) -> dict[str, int]:
    skip = set(ignore)
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()
             if name not in skip}
    return {name: n for name, n in delta.items() if n}


@dataclass
class ByteCount:
    to_redis: int = 0
    from_redis: int = 0


class CountingProxy:
    """A TCP relay in front of Redis that counts the bytes each way."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.port = 0
        self.bytes = ByteCount()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.redis_port)
        tasks = [asyncio.ensure_future(self._pipe(reader, up_writer, "to_redis")),
                 asyncio.ensure_future(self._pipe(up_reader, writer, "from_redis"))]
        self._pipes.update(tasks)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._pipes.difference_update(tasks)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    direction: str) -> None:
        try:
            while data := await src.read(65536):
                setattr(self.bytes, direction, getattr(self.bytes, direction) + len(data))
                dst.write(data)
                await dst.drain()
        finally:
            dst.close()
