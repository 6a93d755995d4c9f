"""The ``coordinator`` command, run as a user runs it (a subprocess) against a real Redis:
each command's output, its exit status, and its errors (one line, never a traceback)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from coordinator.contract.keys import Keys
from coordinator.contract.signing import sign_record
from coordinator.fleet.view import fleet_snapshot
from coordinator.settings import default_id_prefix
from tests.support import (
    COORDINATOR_CLI,
    RedisServer,
    async_wait_until,
    cli_env,
    free_port,
    instance_record,
    keyring,
    publish,
    put_instance,
    put_record,
    redis_mapping,
    run_cli,
    subscribers,
    without_times,
)
from tests.support import event as message

pytestmark = pytest.mark.redis


@pytest.fixture
def env(redis_server: RedisServer, namespace: str) -> dict[str, str]:
    return cli_env(redis_server.url, namespace)


def assert_one_line_error(proc: Any, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coordinator: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return str(lines[0])


def event(instance: str, name: str, phase: str | None, index: int | None,
          key: str | None = None, ts: float | None = None, namespace: str | None = None,
          **extra: Any) -> bytes:
    """An event of a starting instance of seven phases, as it publishes it (signed with
    ``key`` for ``namespace``)."""
    return message(instance, name, phase, index, key=key, namespace=namespace, ts=ts,
                   phases_total=7, state="starting", **extra)


# Older than the 30 s a signed message may be off the reader's clock (docs/security.md, "Signing").
STALE = 31.0


# -- the command itself -----------------------------------------------------------------

def test_the_installed_console_script_is_what_the_tests_run(env: dict[str, str]) -> None:
    """Every test here runs ``coordinator`` as pip installed it: the entry point of
    pyproject's [project.scripts], in this virtualenv, not ``python -m coordinator``."""
    script = Path(COORDINATOR_CLI[0])
    assert script.parent == Path(sys.executable).parent and script.name == "coordinator"
    text = script.read_text()
    assert text.startswith(f"#!{sys.executable}\n"), text
    # [project.scripts] coordinator = "coordinator.ops.arguments:main"
    assert "from coordinator.ops.arguments import main" in text
    usage = run_cli("--help", env=env)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: coordinator "), usage


async def test_python_dash_m_coordinator_is_the_same_command(
        client: redis.Redis, namespace: str, env: dict[str, str]) -> None:
    await put_instance(client, Keys(namespace), "web-a", state="ready", phase="finalize",
                       index=7)
    for args in (("fleet", "--json"), ("check", "--instance", "web-a")):
        script = run_cli(*args, env=env)
        module = subprocess.run([sys.executable, "-m", "coordinator", *args], env=env,
                                capture_output=True, text=True, timeout=30, check=False)
        assert (script.returncode, script.stderr) == (module.returncode, module.stderr) == \
            (0, ""), (script, module)
        if args[0] == "fleet":
            assert without_times(json.loads(script.stdout)) == \
                without_times(json.loads(module.stdout))
        else:
            assert script.stdout == module.stdout


# -- fleet ----------------------------------------------------------------------------

async def test_fleet_prints_a_table_of_every_live_instance(
        client: redis.Redis, namespace: str, env: dict[str, str]) -> None:
    keys, now = Keys(namespace), time.time()
    await put_instance(client, keys, "web-a", now, state="ready", phase="finalize", index=7,
                       admitted=5)
    await put_instance(client, keys, "web-b", now, depth=2)

    proc = run_cli("fleet", env=env)

    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"fleet {namespace} at ") and "2 live instance(s)" in lines[0]
    assert lines[1].split()[:3] == ["INSTANCE", "STATE", "PHASE"]
    assert lines[2].split()[:5] == ["web-a", "ready", "finalize", "7/7", "[#######]"]
    assert lines[3].split()[:5] == ["web-b", "starting", "services", "5/7", "[#####--]"]
    assert "2/50" in lines[3]
    assert lines[4] == ("totals: 2 instance(s) (1 starting, 1 ready); ready 50%; "
                        "held 2/100; open 0; no fleet cap; admitted 5; rejected 0")
    assert len(lines) == 5


async def test_fleet_json_is_the_fleet_snapshot_and_the_options_override_the_env(
        redis_server: RedisServer, client: redis.Redis, namespace: str) -> None:
    keys, now = Keys(namespace), time.time()
    await put_instance(client, keys, "web-a", now, fleet_cap=8)
    await put_instance(client, keys, "web-b", now, state="ready", phase="finalize", index=7,
                       fleet_cap=8)
    wrong = cli_env(f"redis://127.0.0.1:{free_port()}/0", "elsewhere")

    proc = run_cli("fleet", "--json", "--redis-url", redis_server.url, "--namespace", namespace,
                   env=wrong)
    proc_before = run_cli("--redis-url", redis_server.url, "--namespace", namespace, "fleet",
                          "--json", env=wrong)

    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1  # one document per line, for scripts
    doc = json.loads(proc.stdout)
    assert without_times(doc) == without_times(await fleet_snapshot(client, keys))
    assert doc["totals"]["fleet_cap"] == 8
    assert without_times(json.loads(proc_before.stdout)) == without_times(doc)


async def test_fleet_of_an_empty_namespace_is_a_one_line_error(env: dict[str, str]) -> None:
    for args in (("fleet",), ("fleet", "--json")):
        assert_one_line_error(run_cli(*args, env=env), "has no live instances",
                              repr(env["COORD_NAMESPACE"]))


def test_unreachable_redis_is_a_one_line_error_that_hides_the_password(namespace: str) -> None:
    port = free_port()
    env = cli_env(f"redis://ops:hunter2@127.0.0.1:{port}/0", namespace)
    for args in (("fleet",), ("fleet", "--json"), ("fleet", "--watch"), ("events",),
                 ("check", "--instance", "web-a")):
        line = assert_one_line_error(run_cli(*args, env=env), "cannot reach Redis at",
                                     f"redis://ops:***@127.0.0.1:{port}/0")
        assert "hunter2" not in line


def test_bad_options_and_settings_are_one_line_errors(env: dict[str, str]) -> None:
    assert_one_line_error(run_cli("fleet", "--namespace", "no spaces", env=env),
                          "--namespace='no spaces'")
    assert_one_line_error(run_cli("fleet", env={**env, "COORD_REDIS_URL": "http://x"}),
                          "COORD_REDIS_URL", "redis://")
    usage = run_cli("events", "--count", "0", env=env)
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    assert "--count: expected an integer >= 1" in usage.stderr


# -- check ------------------------------------------------------------------------------

async def test_check_exits_0_only_for_a_live_ready_instance(
        client: redis.Redis, namespace: str, env: dict[str, str]) -> None:
    keys, now = Keys(namespace), time.time()
    await put_instance(client, keys, "up", now, state="ready", phase="websocket", index=6)
    await put_instance(client, keys, "booting", now)
    await put_instance(client, keys, "frozen", now, state="ready", beat_age=7200)

    cases = {
        ("--instance", "up"): (0, "up: ready (phase websocket 6/7)"),
        ("--instance", "booting"): (1, "booting: not ready: starting (phase services 5/7)"),
        ("--instance", "frozen"): (1, ("frozen: not ready: last heartbeat 2h00m ago, "
                                       "older than its ttl 10s")),
        ("--instance", "nobody"): (1, f"nobody: not ready: no record in namespace {namespace!r}"),
    }
    for args, (code, line) in cases.items():
        proc = run_cli("check", *args, env=env)
        assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (code, line, ""), args

    local = run_cli("check", env={**env, "COORD_INSTANCE_ID": "up"})
    assert (local.returncode, local.stdout.strip()) == (0, "up: ready (phase websocket 6/7)")


async def test_check_with_a_signing_key_refuses_an_unsigned_record(
        client: redis.Redis, namespace: str, env: dict[str, str]) -> None:
    keys, now = Keys(namespace), time.time()
    forged = instance_record("up", now, state="ready", phase="finalize", index=7)
    await put_record(client, keys, forged)
    signed_env = {**env, "COORD_SIGNING_KEY": "s3cret-key"}

    proc = run_cli("check", "--instance", "up", env=signed_env)
    assert (proc.returncode, proc.stdout.strip()) == (
        1, "up: not ready: its record's signature does not verify")

    await put_record(client, keys, {**forged, "sig": sign_record(
        forged, keyring("s3cret-key", namespace))})
    proc = run_cli("check", "--instance", "up", env=signed_env)
    assert (proc.returncode, proc.stdout.strip()) == (0, "up: ready (phase finalize 7/7)")
    assert "s3cret-key" not in proc.stdout + proc.stderr


async def test_check_with_a_signing_key_trusts_no_copied_id_and_no_refreshed_heartbeat(
        client: redis.Redis, namespace: str, env: dict[str, str]) -> None:
    """Signed records bind their id and their liveness fields: a real, signed record copied
    under an id that never existed, or a dead one with its heartbeat moved forward, is
    not ready."""
    keys, now, key = Keys(namespace), time.time(), "s3cret-key"
    signed_env = {**env, "COORD_SIGNING_KEY": key}

    def signed(fields: dict[str, str]) -> dict[str, str]:
        return {**fields, "sig": sign_record(fields, keyring(key, namespace))}

    up = signed(instance_record("up", now, state="ready", phase="finalize", index=7))
    await put_record(client, keys, up)
    await client.hset(keys.instance("ghost"), mapping=redis_mapping(up))
    proc = run_cli("check", "--instance", "ghost", env=signed_env)
    assert (proc.returncode, proc.stdout.strip()) == (
        1, "ghost: not ready: its record is instance up's")

    dead = signed(instance_record("dead", now, state="ready", phase="finalize", index=7,
                                  beat_age=300))
    await put_record(client, keys, dead)
    proc = run_cli("check", "--instance", "dead", env=signed_env)
    assert proc.returncode == 1 and re.search(r"last heartbeat 5m0\ds ago", proc.stdout), \
        proc.stdout  # 300 s, and the seconds the command took to start
    await client.hset(keys.instance("dead"), mapping={"heartbeat_at": f"{time.time():.6f}"})
    proc = run_cli("check", "--instance", "dead", env=signed_env)
    assert (proc.returncode, proc.stdout.strip()) == (
        1, "dead: not ready: its record's signature does not verify")


async def test_check_without_an_id_checks_this_hosts_one_instance_with_a_generated_id(
        client: redis.Redis, namespace: str, env: dict[str, str]) -> None:
    keys, now, host = Keys(namespace), time.time(), socket.gethostname()
    mine = f"{default_id_prefix(host)}4242-a1b2c3"
    # An explicit id that merely starts like a generated one; a generated-looking id whose
    # record names another host (two host names can sanitize to one prefix).
    await put_instance(client, keys, f"{default_id_prefix(host)}admin", now, state="ready",
                       host=host)
    await put_instance(client, keys, f"{default_id_prefix(host)}9-abcdef", now, state="ready",
                       host=f"{host} ")
    await put_instance(client, keys, f"{default_id_prefix('elsewhere')}1-ffffff", now,
                       state="ready", host="elsewhere")
    await put_instance(client, keys, f"{default_id_prefix(host)}7-dead00", now, state="ready",
                       host=host, beat_age=7200)  # an earlier life, not live
    alone = run_cli("check", env=env)
    assert (alone.returncode, alone.stdout.strip(), alone.stderr) == (
        1, (f"{host}: not ready: no live instance of this host with a generated id in "
            f"namespace {namespace!r} (name one: --instance ID or COORD_INSTANCE_ID)"), "")

    await put_instance(client, keys, mine, now, host=host)
    starting = run_cli("check", env=env)
    assert (starting.returncode, starting.stdout.strip()) == (
        1, f"{mine}: not ready: starting (phase services 5/7)")
    await put_instance(client, keys, mine, now, state="ready", phase="websocket", index=6,
                       host=host)
    ready = run_cli("check", env=env)
    assert (ready.returncode, ready.stdout.strip()) == (0, f"{mine}: ready (phase websocket 6/7)")

    twin = f"{default_id_prefix(host)}4243-d4e5f6"
    await put_instance(client, keys, twin, now, host=host)
    line = assert_one_line_error(run_cli("check", env=env), "2 live instances of host",
                                 mine, twin, "pass --instance")
    assert line.startswith(f"coordinator: error: 2 live instances of host {host} (")


async def test_check_without_an_id_and_with_a_key_is_not_fooled_by_a_forged_twin(
        client: redis.Redis, namespace: str, env: dict[str, str]) -> None:
    """One unsigned record under a generated-looking id of this host once made the probe
    of a ready, signed instance exit 2 ("2 live instances"): with a key, only records
    that verify count."""
    keys, now, host, key = Keys(namespace), time.time(), socket.gethostname(), "s3cret-key"
    mine = f"{default_id_prefix(host)}4242-a1b2c3"
    record = instance_record(mine, now, state="ready", phase="websocket", index=6, host=host)
    await put_record(client, keys, {**record, "sig": sign_record(record,
                                                                 keyring(key, namespace))})
    await put_instance(client, keys, f"{default_id_prefix(host)}4243-d4e5f6", now,
                       state="ready", host=host)  # unsigned: a writer without the key
    proc = run_cli("check", env={**env, "COORD_SIGNING_KEY": key})
    assert (proc.returncode, proc.stdout.strip()) == (0, f"{mine}: ready (phase websocket 6/7)")


# -- events -----------------------------------------------------------------------------

async def test_events_prints_one_line_per_event_and_stops_after_count(
        client: redis.Redis, namespace: str, env: dict[str, str], follow_cli: Any) -> None:
    channel = Keys(namespace).events
    proc = follow_cli("events", "--count", "4", env=env)
    await async_wait_until(lambda: subscribers(client, channel), 10, what="the subscription")

    await publish(client, channel, event("web-a", "phase_started", "services", 5))
    await publish(client, channel, event("web-a", "phase_completed", "services", 5,
                                        duration=4.25))
    await publish(client, channel, b"{not json")
    await publish(client, channel, event("web-a", "ready", "services", 5))

    assert proc.wait(10) == 0, proc.stderr
    assert proc.stderr.strip() == f"following {channel} (Ctrl-C to stop)"
    assert len(proc.lines) == 4
    stamp = r"\d\d:\d\d:\d\d\.\d\d\d"
    fields = [line.split(None, 1) for line in proc.lines]
    assert all(re.fullmatch(stamp, f[0]) for f in fields), proc.lines
    assert fields[0][1].split() == ["web-a", "phase_started", "services", "5/7"]
    assert fields[1][1].split() == ["web-a", "phase_completed", "services", "5/7", "took",
                                    "4.250s"]
    assert fields[2][1] == "-  dropped invalid message (invalid_json)"
    assert fields[3][1].split() == ["web-a", "ready", "services", "5/7"]


async def test_events_json_prints_each_valid_message_as_received(
        client: redis.Redis, namespace: str, env: dict[str, str], follow_cli: Any) -> None:
    channel = Keys(namespace).events
    key = "events-key"
    proc = follow_cli("events", "--json", "--count", "4", env={**env, "COORD_SIGNING_KEY": key})
    await async_wait_until(lambda: subscribers(client, channel), 10, what="the subscription")

    signed = event("web-a", "ready", "services", 5, key, namespace=namespace)
    await publish(client, channel, event("web-a", "ready", "services", 5))
    await publish(client, channel, event("web-a", "ready", "services", 5, "wrong-key",
                                        namespace=namespace))
    await publish(client, channel, event("web-a", "ready", "services", 5, key,
                                        ts=time.time() - STALE, namespace=namespace))
    await publish(client, channel, signed)

    assert proc.wait(10) == 0, proc.stderr
    assert proc.lines == [signed.decode()]
    assert "dropped invalid message (unsigned)" in proc.stderr
    assert "dropped invalid message (bad_signature)" in proc.stderr
    assert "dropped invalid message (stale: " in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_events_with_a_key_shows_a_stale_message_as_dropped(
        client: redis.Redis, namespace: str, env: dict[str, str], follow_cli: Any) -> None:
    """A correctly signed message whose ts is over 30 s old: a replay, shown as dropped."""
    channel = Keys(namespace).events
    key = "events-key"
    proc = follow_cli("events", "--count", "2", env={**env, "COORD_SIGNING_KEY": key})
    await async_wait_until(lambda: subscribers(client, channel), 10, what="the subscription")

    await publish(client, channel, event("web-a", "ready", "services", 5, key,
                                        ts=time.time() - STALE, namespace=namespace))
    await publish(client, channel, event("web-a", "ready", "services", 5, key,
                                        namespace=namespace))

    assert proc.wait(10) == 0, proc.stderr
    fields = [line.split(None, 1)[1] for line in proc.lines]
    assert len(fields) == 2, proc.lines
    assert fields[0].startswith("-  dropped invalid message (stale: "), fields[0]
    assert fields[1].split() == ["web-a", "ready", "services", "5/7"]
    assert "Traceback" not in proc.stderr


async def test_events_follows_until_ctrl_c_and_exits_0(
        client: redis.Redis, namespace: str, env: dict[str, str], follow_cli: Any) -> None:
    channel = Keys(namespace).events
    proc = follow_cli("events", env=env)
    await async_wait_until(lambda: subscribers(client, channel), 10, what="the subscription")
    await publish(client, channel, event("web-b", "draining", "finalize", 7))
    await async_wait_until(lambda: proc.lines, 10, what="the event line")

    assert proc.interrupt() == 0
    assert "Traceback" not in proc.stderr
    assert proc.lines[0].split()[1:] == ["web-b", "draining", "finalize", "7/7"]


# -- fleet --watch ----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["table", "json"])
async def test_watch_redraws_on_each_event_and_exits_0_on_ctrl_c(
        client: redis.Redis, namespace: str, env: dict[str, str], follow_cli: Any,
        mode: str) -> None:
    keys, now = Keys(namespace), time.time()
    await put_instance(client, keys, "web-a", now, depth=1)
    # A refresh period far beyond the test: every redraw after the first is an event's.
    proc = follow_cli("fleet", "--watch", "--interval", "600",
                  *(["--json"] if mode == "json" else []), env=env)

    def states() -> list[str]:
        if mode == "json":
            return [json.loads(line)["instances"][0]["state"] for line in proc.lines]
        return [line.split()[1] for line in proc.lines if line.startswith("web-a ")]

    await async_wait_until(lambda: states() == ["starting"], 10, what="the first frame")
    await async_wait_until(lambda: subscribers(client, keys.events), 10, what="subscription")
    await put_instance(client, keys, "web-a", time.time(), state="ready", phase="finalize", index=7)
    await publish(client, keys.events, event("web-a", "ready", "services", 5))
    await async_wait_until(lambda: states() == ["starting", "ready"], 10, what="a redraw")

    assert proc.interrupt() == 0
    assert "Traceback" not in proc.stderr
    if mode == "table":
        frames = proc.output.split("\n\n")
        assert all(f.startswith(f"fleet {namespace} at ") for f in frames if f), frames
        assert "totals: 1 instance(s) (1 ready); ready 100%" in frames[1]
    else:
        assert all(json.loads(line)["namespace"] == namespace for line in proc.lines)


async def test_fleet_and_check_print_no_terminal_escape_from_redis(
        client: redis.Redis, namespace: str, env: dict[str, str]) -> None:
    keys = Keys(namespace)
    hostile = "ready\x1b]0;owned\x07\x1b[2J"
    await put_instance(client, keys, "web-a", state=hostile, phase="cache\x1b[31m")
    for args in (("fleet",), ("check", "--instance", "web-a")):
        proc = run_cli(*args, env=env)
        assert proc.returncode in (0, 1), proc.stderr
        assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout, args
        assert "ready\\x1b]0;owned" in proc.stdout, args
