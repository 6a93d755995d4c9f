"""The two ACL users of docs/security.md, exactly as written there, against a
real redis-server: an instance with only its ACL runs a full startup, hold, lease,
release and drain; the operators' read-only user runs the CLI and the dashboard. And a
permission that is missing is said as such."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as redis

from coordinator._redis.client import make_redis
from coordinator.contract.keys import Keys
from coordinator.contract.record import as_text
from coordinator.ops.dashboard import FleetFeed
from harness.topologies import Cluster
from tests.support import (
    CHAT,
    ROOT,
    RedisServer,
    async_wait_until,
    chat,
    cli_env,
    run_cli,
    subscribers,
    wait_for_phase,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

ADMIN_PASSWORD = "admin-pw-acl"


ACL_DOCS = ("docs/security.md", "docs/deploy.md")  # ACLs; Redis deployments (a cluster's)


def documented_acl(user: str, namespace: str, password: str,
                   cluster: bool = False) -> list[str]:
    """The docs' ``ACL SETUSER <user> on ...`` line (docs/security.md, "ACLs"), for
    ``namespace`` and ``password`` (with ``cluster``, and its ``ACL SETUSER <user> +...``
    line for a cluster: docs/deploy.md, "Redis deployments")."""
    text = "\n".join((ROOT / doc).read_text() for doc in ACL_DOCS)
    lines = [line for line in text.splitlines() if line.startswith(f"ACL SETUSER {user} ")]
    base = [line for line in lines if line.split()[3] == "on"]
    more = [line for line in lines if line.split()[3].startswith("+")]
    assert len(base) == len(more) == 1, f"the docs have no single pair of ACL lines for {user}"
    words = base[0].split()[3:] + (more[0].split()[3:] if cluster else [])
    return [re.sub(r"^>[A-Z_]+$", f">{password}", w).replace("{coord}:", f"{{{namespace}}}:")
            for w in words]


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    """A redis-server whose default user is an administrator with a password."""
    server = RedisServer(extra=("--requirepass", ADMIN_PASSWORD)).start()
    yield server
    server.kill()


def url(server: RedisServer, user: str, password: str) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


@pytest.fixture
async def admin(acl_server: RedisServer) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(f"redis://:{ADMIN_PASSWORD}@127.0.0.1:{acl_server.port}/0",
                                  decode_responses=True)
    await client.acl_log_reset()
    yield client
    await client.aclose()


async def make_user(admin: redis.Redis, name: str, rules: list[str]) -> None:
    await admin.execute_command("ACL", "SETUSER", name, "reset", *rules)


async def denials(admin: redis.Redis) -> list[str]:
    """What ACL LOG recorded as refused, but CLIENT SETINFO (redis-py ignores it)."""
    return [f"{e['username']}: {e['object']}" for e in await admin.acl_log()
            if e["object"] != "client|setinfo"]


async def test_an_instance_with_only_its_acl_starts_holds_leases_releases_and_drains(
        acl_server: RedisServer, admin: redis.Redis, namespace: str, start_backend: Any) -> None:
    user = f"{namespace}-inst"[:60]
    await make_user(admin, user, documented_acl("coord-instance", namespace, "inst-pw"))
    keys = Keys(namespace)
    backend = start_backend({
        "COORD_REDIS_URL": url(acl_server, user, "inst-pw"), "COORD_NAMESPACE": namespace,
        "COORD_INSTANCE_ID": "acl-1", "COORD_FLEET_MAX_QUEUE": "5",
        "COORD_FLEET_ADMIT_RATE": "50",  # the admission bucket's script (N:admit) too
        "COORD_SIGNING_KEY": "acl-key", "COORD_DRAIN_GRACE": "0.5",
        "BACKEND_PHASE_DURATIONS": "services=2"})
    # Held while services runs: a lease in Redis, the fleet cap enforced by the fleet.
    await asyncio.to_thread(wait_for_phase, backend, ["services"])
    client = asyncio.create_task(chat(backend.ws_url))
    await async_wait_until(lambda: _leases(admin, keys), 15, what="a lease in N:leases")
    status, body = await asyncio.to_thread(backend.get, "/health/ready")
    assert body["fleet_cap"]["mode"] == "fleet" and body["redis"] == "ok", body
    assert (await client).kind == CHAT  # released when ready, its lease given back
    await async_wait_until(lambda: _no_leases(admin, keys), 10, what="the lease released")
    await async_wait_until(lambda: admin.exists(keys.phase_stats), 15,
                           what="the phase statistics folded (a script)")
    status, doc = await asyncio.to_thread(backend.get, "/fleet")  # READ_INDEX, READ_PAGE
    assert status == 200 and [i["id"] for i in doc["instances"]] == ["acl-1"]
    assert await asyncio.to_thread(backend.terminate) == 0
    assert not await admin.exists(keys.instance("acl-1"))  # the drain removed it
    assert await admin.zscore(keys.instances, "acl-1") is None
    log = backend.log()
    for trouble in ("NOPERM", "unavailable", "link lost", "Traceback", "refused"):
        assert trouble not in log, log
    assert await denials(admin) == []


async def _leases(admin: redis.Redis, keys: Keys) -> bool:
    return bool(await admin.zcard(keys.leases))


async def _no_leases(admin: redis.Redis, keys: Keys) -> bool:
    return not await admin.zcard(keys.leases)


async def test_the_operators_read_only_user_runs_the_cli_and_the_dashboard(
        acl_server: RedisServer, admin: redis.Redis, namespace: str, start_backend: Any,
        follow_cli: Any) -> None:
    await make_user(admin, "inst", documented_acl("coord-instance", namespace, "inst-pw"))
    user = f"{namespace}-ops"[:60]
    await make_user(admin, user, documented_acl("coord-operator", namespace, "ops-pw"))
    keys = Keys(namespace)
    backend = start_backend({"COORD_REDIS_URL": url(acl_server, "inst", "inst-pw"),
                             "COORD_NAMESPACE": namespace, "COORD_INSTANCE_ID": "seen",
                             "BACKEND_PHASE_DURATIONS": "services=0.1"})
    await asyncio.to_thread(backend.wait_ready)
    await admin.zadd(keys.instances, {"long-gone": time.time() - 3600})  # to prune, if it could
    env = cli_env(url(acl_server, user, "ops-pw"), namespace)
    fleet = run_cli("fleet", env=env)
    assert fleet.returncode == 0 and "seen" in fleet.stdout, fleet.stderr
    as_json = run_cli("fleet", "--json", env=env)
    assert [i["id"] for i in json.loads(as_json.stdout)["instances"]] == ["seen"]
    check = run_cli("check", "--instance", "seen", env=env)
    assert (check.returncode, check.stderr) == (0, ""), check.stdout
    events = follow_cli("events", "--count", "1", env=env)
    await async_wait_until(lambda: _subscribed(admin, keys), 10, what="events subscribed")
    assert await asyncio.to_thread(backend.terminate) == 0  # publishes draining, stopped
    assert events.wait(10) == 0 and "draining" in events.output, events.stderr

    operator = redis.Redis.from_url(url(acl_server, user, "ops-pw"))
    feed = FleetFeed(operator, keys, interval=60)
    try:
        frame = (await feed.snapshot_frame()).decode()
        assert frame.startswith("event: snapshot"), frame
        assert feed.reader.scripts is False  # refused once, then plain reads
        async with feed.subscribe() as page:
            first = await asyncio.wait_for(page.get(), 10)
            assert first is not None and first.startswith(b"event: snapshot")
    finally:
        await operator.aclose()
    assert await admin.zscore(keys.instances, "long-gone") is not None  # nothing pruned
    refused = await denials(admin)
    assert refused and all(d.endswith(": evalsha") for d in refused), refused


async def _subscribed(admin: redis.Redis, keys: Keys) -> bool:
    return dict(await admin.pubsub_numsub(keys.events)).get(keys.events, 0) > 0


async def test_a_missing_permission_is_said_as_such(
        acl_server: RedisServer, admin: redis.Redis, namespace: str, start_backend: Any) -> None:
    rules = [r for r in documented_acl("coord-instance", namespace, "inst-pw")
             if r != "+zremrangebyscore"]
    await make_user(admin, "short", rules)
    backend = start_backend({"COORD_REDIS_URL": url(acl_server, "short", "inst-pw"),
                             "COORD_NAMESPACE": namespace, "COORD_FLEET_MAX_QUEUE": "5",
                             "BACKEND_PHASE_DURATIONS": "services=3"})
    await asyncio.to_thread(wait_for_phase, backend, ["services"])
    outcome = asyncio.create_task(chat(backend.ws_url))
    await asyncio.to_thread(wait_until, lambda: "NOPERM" in backend.log(), 15,
                            what="the refusal logged")
    _status, body = await asyncio.to_thread(backend.get, "/health/ready")
    assert body["fleet_cap"]["mode"] == "local" and "ZREMRANGEBYSCORE" in \
        body["fleet_cap"]["refused"], body
    assert (await outcome).kind == CHAT  # held under the local cap, then released
    line = next(line for line in backend.log().splitlines() if "NOPERM" in line)
    # The line points to the ACLs' documentation.
    assert "ERROR" in line and "ZREMRANGEBYSCORE" in line and "docs/security.md" in line

    await make_user(admin, "blind", [r for r in documented_acl("coord-operator", namespace, "x")
                                      if r != "+zrevrange"])
    proc = run_cli("fleet", env=cli_env(url(acl_server, "blind", "x"), namespace))
    assert proc.returncode == 2
    assert "refused a command (NOPERM)" in proc.stderr and "cannot reach" not in proc.stderr


async def test_on_a_cluster_each_user_needs_only_its_cluster_line_besides(
        namespace: str, start_backend: Any, follow_cli: Any) -> None:
    """Both users as the docs write them for a cluster (the line of docs/security.md and
    the one of docs/deploy.md), set on every node: the instance starts, holds under the fleet cap
    and releases; the operator runs the CLI through a node that may not hold the slot."""
    cluster = Cluster()
    try:
        for n in range(len(cluster.nodes)):
            with cluster.client(n) as node:
                for user, pw in (("coord-instance", "inst-pw"), ("coord-operator", "ops-pw")):
                    node.execute_command("ACL", "SETUSER", user, "reset",
                                         *documented_acl(user, namespace, pw, cluster=True))
                node.execute_command("ACL", "LOG", "RESET")
        port = cluster.nodes[(cluster.owner(namespace) + 1) % len(cluster.nodes)].port
        keys, admin = Keys(namespace), make_redis(cluster.url, namespace=namespace)
        backend = start_backend({
            "COORD_REDIS_URL": f"redis://coord-instance:inst-pw@127.0.0.1:{port}/0",
            "COORD_NAMESPACE": namespace, "COORD_INSTANCE_ID": "acl-c",
            "COORD_FLEET_MAX_QUEUE": "5", "COORD_FLEET_ADMIT_RATE": "50",
            "COORD_DRAIN_GRACE": "0.5", "BACKEND_PHASE_DURATIONS": "services=2"})
        await asyncio.to_thread(wait_for_phase, backend, ["services"])
        client = asyncio.create_task(chat(backend.ws_url))
        await async_wait_until(lambda: _leases(admin, keys), 15, what="a lease in N:leases")
        assert (await client).kind == CHAT
        # The phases after the ready one go on: the one event followed is the drain's.
        await async_wait_until(lambda: "phase finalize done" in backend.log(), 10,
                               what="the last phase done")
        env = cli_env(f"redis://coord-operator:ops-pw@127.0.0.1:{port}/0", namespace)
        events = follow_cli("events", "--count", "1", env=env)
        await async_wait_until(lambda: _shard_subscribed(admin, keys), 10,
                               what="events subscribed (sharded)")
        as_json = await asyncio.to_thread(run_cli, "fleet", "--json", env=env)
        assert [i["id"] for i in json.loads(as_json.stdout)["instances"]] == ["acl-c"], \
            as_json.stderr
        assert await asyncio.to_thread(backend.terminate) == 0
        assert events.wait(10) == 0 and "draining" in events.output, events.stderr
        log = backend.log()
        for trouble in ("NOPERM", "unavailable", "link lost", "Traceback", "refused"):
            assert trouble not in log, log
        refused = []
        for n in range(len(cluster.nodes)):
            with cluster.client(n) as node:
                refused += [f"{as_text(e['username'])}: {as_text(e['object'])}"
                            for e in node.acl_log() if as_text(e["object"]) != "client|setinfo"]
        assert all(r == "coord-operator: evalsha" for r in refused), refused
        await admin.aclose()
    finally:
        cluster.kill()


async def _shard_subscribed(admin: redis.Redis, keys: Keys) -> bool:
    return await subscribers(admin, keys.events) > 0
