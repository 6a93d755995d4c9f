"""The ``coordinator`` command: the fleet, its events and one instance's readiness.

    coordinator fleet  [--json] [--watch [--interval S]]
    coordinator events [--json] [--count N]
    coordinator check  [--instance ID]
    coordinator dashboard [--host H] [--port P]

Every command reads Redis only (``COORD_REDIS_URL``, ``COORD_NAMESPACE``, or
``--redis-url`` / ``--namespace``). Exit status: 0 success (``check``: ready), 1 ``check``:
not ready, 2 a usage, configuration or Redis error, reported on one line of stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, TextIO

import redis.asyncio as redis
from redis.exceptions import NoPermissionError

from coordinator._redis.client import REDIS_ERRORS, make_redis
from coordinator._redis.clock import ServerClock
from coordinator._redis.pubsub import bounded_pubsub
from coordinator.contract.events import decode_event
from coordinator.contract.keys import Keys
from coordinator.contract.record import as_text, decode_record, is_live
from coordinator.contract.signing import Keyring, record_signature_ok
from coordinator.exceptions import ConfigError, CoordinatorError, InvalidMessage
from coordinator.fleet.registry import read_record
from coordinator.fleet.view import FleetReader, fleet_snapshot
from coordinator.ops.render import (
    CLEAR_SCREEN,
    duration,
    phase_progress,
    printable,
    render_event,
    render_fleet_table,
)
from coordinator.settings import Settings, generated_on, scrub

EXIT_OK, EXIT_NOT_READY, EXIT_ERROR = 0, 1, 2
WATCH_SETTLE = 0.05  # after an event, wait this long for the rest of its burst
WATCH_MAX_SETTLE = 0.5


class CliError(CoordinatorError):
    """A failure the user can act on: printed as one line, exit status 2."""


# -- commands ---------------------------------------------------------------------------

async def fleet(client: redis.Redis, keys: Keys, as_json: bool, out: TextIO,
                keyring: Keyring | None = None) -> int:
    doc = await fleet_snapshot(client, keys, keyring=keyring)
    if not doc["instances"]:
        raise CliError(f"namespace {keys.namespace!r} has no live instances "
                       "(check --namespace or COORD_NAMESPACE)")
    print(_json(doc) if as_json else render_fleet_table(doc), file=out, flush=True)
    return EXIT_OK


async def watch(client: redis.Redis, keys: Keys, as_json: bool, interval: float,
                out: TextIO, settings: Settings) -> int:
    """Redraw on every event on ``N:events`` and every ``interval``; ends on Ctrl-C.

    A Redis outage while watching is shown in place of the table and retried on the
    next refresh; only an unreachable Redis at the start is an error.
    """
    await client.ping()
    reader = FleetReader(client, keys, keyring=settings.keyring)  # remembers refusals
    clear = out.isatty() and not as_json
    pubsub: Any = None
    try:
        while True:
            try:
                if pubsub is None:
                    pubsub = bounded_pubsub(client)
                    await pubsub.follow(keys.events)
                doc = await reader.snapshot()
                frame = _json(doc) if as_json else render_fleet_table(doc)
            except REDIS_ERRORS as exc:
                problem = redis_problem(exc, settings.redis_url)
                what = ("refused a command (NOPERM)" if isinstance(exc, NoPermissionError)
                        else "unreachable")
                frame = (_json({"namespace": keys.namespace, "error": problem}) if as_json
                         else f"redis {what} at {settings.redis_url_redacted}: {problem}; "
                         f"retrying every {interval:g}s")
                await _close(pubsub)
                pubsub = None
            print((CLEAR_SCREEN if clear else "") + frame + ("" if clear or as_json else "\n"),
                  file=out, flush=True)
            if pubsub is None:
                await asyncio.sleep(interval)
                continue
            try:
                if await _next_event(pubsub, interval):
                    await _drain_burst(pubsub)
            except REDIS_ERRORS:
                await _close(pubsub)  # subscribe again (and redraw) at once
                pubsub = None
            if pubsub is not None and not pubsub.following:  # the slot moved
                await _close(pubsub)
                pubsub = None
    finally:
        await _close(pubsub)


async def _next_event(pubsub: Any, timeout: float) -> bool:
    """True when an event arrived within ``timeout``; False when the time ran out."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        if await pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining):
            return True
    return False


async def _drain_burst(pubsub: Any) -> None:
    """Swallow the rest of a burst (one phase change publishes several events), for at
    most ``WATCH_MAX_SETTLE``: a steady stream of events still redraws."""
    deadline = time.monotonic() + WATCH_MAX_SETTLE
    while time.monotonic() < deadline and await pubsub.get_message(
            ignore_subscribe_messages=True, timeout=WATCH_SETTLE):
        pass


async def _close(pubsub: Any) -> None:
    if pubsub is not None:
        with contextlib.suppress(*REDIS_ERRORS):
            await pubsub.aclose()


async def events(client: redis.Redis, keys: Keys, as_json: bool, count: int | None,
                 keyring: Keyring | None, out: TextIO) -> int:
    """Follow ``N:events``: one line per message, until ``count`` messages or Ctrl-C."""
    pubsub = bounded_pubsub(client)
    try:
        await pubsub.follow(keys.events)
        print(f"following {keys.events} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        seen = 0
        while count is None or seen < count:
            if not pubsub.following:  # the slot moved: follow it where it is now
                await _close(pubsub)
                pubsub = bounded_pubsub(client)
                await pubsub.follow(keys.events)
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is None:
                continue
            seen += 1
            data = msg.get("data")
            if not isinstance(data, (bytes, str)):
                continue
            if as_json:
                try:
                    decode_event(data, keyring=keyring)
                except InvalidMessage as exc:
                    print(f"coordinator: dropped invalid message ({exc})", file=sys.stderr,
                          flush=True)
                    continue
                # One line, ASCII: JSON escapes every control character (a message may
                # legally spread over lines, or carry an ESC sequence in a string).
                line = json.dumps(json.loads(data), separators=(",", ":"))
            else:
                line = render_event(data, keyring)
            print(line, file=out, flush=True)
    finally:
        await _close(pubsub)
    return EXIT_OK


async def check(client: redis.Redis, keys: Keys, instance_id: str | None,
                keyring: Keyring | None, out: TextIO) -> int:
    """Exit 0 when the instance's record says ready, is live and (if signed) verifies.

    With no id, the instance is the one live instance of this host with a generated id
    (``<host>-<pid>-<random>``): what a container's probe needs, with nothing to configure.
    """
    if instance_id is None:
        host = socket.gethostname()
        instance_id = await local_instance(client, keys, host, keyring)
        if instance_id is None:
            print(f"{printable(host)}: not ready: no live instance of this host with a "
                  f"generated id in namespace {keys.namespace!r} (name one: --instance ID or "
                  "COORD_INSTANCE_ID)", file=out, flush=True)
            return EXIT_NOT_READY
    clock = ServerClock()  # liveness on the Redis server's clock, heartbeat_at's
    raw = await read_record(client, keys, instance_id, clock=clock)
    code, reason = check_record(instance_id, keys.namespace, raw, keyring, clock.now())
    print(printable(reason), file=out, flush=True)
    return code


async def local_instance(client: redis.Redis, keys: Keys, host: str,
                         keyring: Keyring | None = None) -> str | None:
    """The id of the one live instance of ``host`` whose id was generated, else None.

    With a signing key, only records that verify (and are the instance's own) count: a
    forged record beside the real one cannot make the probe fail.

    Reads the index and only the records whose ids have the generated form for this
    host, so a probe stays cheap in a large fleet; the record must name this host too
    (two host names can sanitize to one prefix). Several such instances (processes
    sharing a host, as in bin/demo, or a restarted container's previous life until its
    record expires) are an error: the probe cannot tell which one is meant.
    """
    members = [as_text(m) for m in await client.zrange(keys.instances, 0, -1)]
    ids = [m for m in members if generated_on(m, host)]
    now, found = await ServerClock().sync(client), []  # heartbeat_at's clock
    for instance_id in ids:
        raw = await read_record(client, keys, instance_id)
        if keyring is not None and (not record_signature_ok(raw, keyring)
                                    or raw.get("id") != instance_id):
            continue
        record = decode_record(raw)
        if record.get("host") == host and is_live(record, now):
            found.append(instance_id)
    if len(found) > 1:
        listed = ", ".join(printable(i) for i in found[:5]) + (", ..." if len(found) > 5 else "")
        raise CliError(f"{len(found)} live instances of host {printable(host)} "
                       f"({listed}): pass --instance")
    return found[0] if found else None


def check_record(instance_id: str, namespace: str, raw: Mapping[str, str],
                 keyring: Keyring | None, now: float) -> tuple[int, str]:
    if not raw:
        return EXIT_NOT_READY, f"{instance_id}: not ready: no record in namespace {namespace!r}"
    if not record_signature_ok(raw, keyring):
        return EXIT_NOT_READY, f"{instance_id}: not ready: its record's signature does not verify"
    if raw.get("id") != instance_id:  # a copy of another instance's (signed) record
        return EXIT_NOT_READY, f"{instance_id}: not ready: its record is instance {raw.get('id')}'s"
    record = decode_record(raw)
    where = phase_progress(record.get("phase"), record.get("phase_index"),
                           record.get("phases_total"), bar=False)
    if not is_live(record, now):
        beat = record.get("heartbeat_at")
        age = now - beat if isinstance(beat, float) else None
        return EXIT_NOT_READY, (f"{instance_id}: not ready: last heartbeat {duration(age)} ago, "
                                f"older than its ttl {duration(record.get('ttl'))}")
    state = record.get("state")
    if state == "ready":
        return EXIT_OK, f"{instance_id}: ready (phase {where})"
    return EXIT_NOT_READY, f"{instance_id}: not ready: {state} (phase {where})"


# -- the command line -------------------------------------------------------------------

def load_settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    overrides = {name: getattr(args, name) for name in ("redis_url", "namespace")
                 if hasattr(args, name)}
    try:
        return Settings.from_env(env, **overrides)
    except ConfigError as exc:
        flag = {"COORD_REDIS_URL": "redis_url", "COORD_NAMESPACE": "namespace"}.get(exc.variable)
        if flag in overrides:
            option = "--" + flag.replace("_", "-")
            raise CliError(f"{option}={exc.value!r}: {exc.problem}") from None
        raise CliError(f"configuration: {exc}") from None


async def run(args: argparse.Namespace, settings: Settings, env: Mapping[str, str],
              out: TextIO) -> int:
    keys = Keys(settings.namespace)
    instance_id = None
    if args.command == "check":
        instance_id = args.instance or env.get("COORD_INSTANCE_ID", "").strip() or None
    client = make_redis(settings.redis_url, namespace=settings.namespace,
                        mode=settings.redis_mode, max_connections=4)
    try:
        if args.command == "fleet" and args.watch:
            return await watch(client, keys, args.json, args.interval, out, settings)
        if args.command == "fleet":
            return await fleet(client, keys, args.json, out, settings.keyring)
        if args.command == "events":
            return await events(client, keys, args.json, args.count, settings.keyring, out)
        return await check(client, keys, instance_id, settings.keyring, out)
    except BrokenPipeError:
        raise  # the reader of our output left: not a Redis problem (main() handles it)
    except NoPermissionError as exc:  # reached it, and it said no: not an outage
        raise CliError(f"Redis at {settings.redis_url_redacted} refused a command (NOPERM): "
                       f"{redis_problem(exc, settings.redis_url)}; the user's ACL lacks a "
                       "permission (docs/security.md)") from None
    except REDIS_ERRORS as exc:
        raise CliError(f"cannot reach Redis at {settings.redis_url_redacted}: "
                       f"{redis_problem(exc, settings.redis_url)}") from None
    finally:
        with contextlib.suppress(*REDIS_ERRORS):
            await client.aclose()


def run_parsed(args: argparse.Namespace, env: Mapping[str, str] | None = None,
               out: TextIO | None = None) -> int:
    """Run a command already parsed: ``coordinator.ops.arguments.main`` (the console
    script) parses it before this module, and Redis with it, is imported."""
    env = os.environ if env is None else env
    out = sys.stdout if out is None else out
    try:
        settings = load_settings(args, env)
        if args.command == "dashboard":
            return dashboard(args, settings)
        if args.command == "drain":
            return drain(args, settings, env, out)
        return asyncio.run(run(args, settings, env, out))
    except CliError as exc:
        print(f"coordinator: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `coordinator events | head`: the reader left
        with contextlib.suppress(OSError):  # keep the interpreter's exit flush quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def dashboard(args: argparse.Namespace, settings: Settings) -> int:
    try:
        from coordinator.ops.dashboard import serve  # only this command needs the web stack
    except ImportError as exc:
        raise CliError(f"the dashboard needs the `dashboard` extra ({exc.name} is missing): "
                       "pip install 'ws-coordinator[dashboard]'") from None

    try:  # listening first: the address is announced only once it is ours
        listener = listen(args.host, args.port)
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: "
                       f"{exc.strerror or exc}") from None
    print(f"coordinator: dashboard of namespace {settings.namespace!r} on "
          f"http://{args.host}:{args.port}/dashboard/", file=sys.stderr, flush=True)
    # uvicorn shuts down cleanly on SIGTERM, then raises the signal again under the
    # handler it found; with the default one the process would end by the signal. A
    # clean stop is a success: SIGTERM exits 0, as Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _exit_ok)
    try:
        serve(settings.redis_url, settings.namespace, args.host, args.port,
              signing_key=settings.signing_key, redis_mode=settings.redis_mode,
              sockets=[listener])
    except SystemExit as exc:  # uvicorn's start-up failure (e.g. the port is taken), logged
        return EXIT_ERROR if exc.code else EXIT_OK
    finally:
        signal.signal(signal.SIGTERM, previous)
    return EXIT_OK


def drain(args: argparse.Namespace, settings: Settings, env: Mapping[str, str],
          out: TextIO) -> int:
    """``coordinator drain``: POST to the drain endpoint, wait for its answer (the
    instance has drained then); no Redis."""
    if not settings.drain_token:
        raise CliError("COORD_DRAIN_TOKEN is not set: the drain endpoint needs its token")
    url = args.url or f"http://127.0.0.1:{env.get('PORT', '').strip() or 8000}/drain"
    request = urllib.request.Request(url, method="POST", data=b"", headers={
        "Authorization": f"Bearer {settings.drain_token}"})
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as resp:
            body = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:200]
        raise CliError(f"{url}: HTTP {exc.code}: {detail}") from None
    except (OSError, ValueError) as exc:
        raise CliError(f"{url}: {exc}") from None
    print(f"instance {body.get('instance')} drained: {body.get('state')}", file=out, flush=True)
    return EXIT_OK


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (IPv6 when the host is), not yet listening."""
    family, kind, proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _exit_ok(signum: int, frame: object) -> None:
    raise SystemExit(EXIT_OK)


def redis_problem(exc: BaseException, url: str) -> str:
    """The error on one line, never carrying the password (whatever redis-py put in it)."""
    return scrub(" ".join(str(exc).split()) or type(exc).__name__, url)[:200]


def _json(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"))
