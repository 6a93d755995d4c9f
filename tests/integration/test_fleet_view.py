"""The fleet view (registry.fleet_snapshot) against a real redis-server, and its table.

Records are written with the same writer the instances use (registry.write_record), so
these tests pin the reader to the contract, not to one instance's habits.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis.asyncio as redis

from coordinator import ConnectionGate, Coordinator, Settings
from coordinator.contract.documents import FleetDocument
from coordinator.contract.keys import Keys
from coordinator.contract.record import as_text
from coordinator.fleet.view import PRUNE_INDEX, fleet_snapshot
from coordinator.ops.render import render_fleet_table
from tests.support import RedisServer, async_wait_until, echo_app, put_instance

pytestmark = pytest.mark.redis

TTL = 10.0


async def server_time(client: redis.Redis) -> float:
    secs, usecs = await client.time()
    return secs + usecs / 1e6


async def test_every_live_instance_with_its_fields_and_the_fleet_totals(
        client: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    now = time.time()
    await put_instance(client, keys, "web-a", now, state="ready", phase="finalize", index=7,
                       admitted=12, rejected=1, fleet_cap=10)
    await put_instance(client, keys, "web-b", now, depth=3, expected_ready_at=now + 2.5,
                       admitted=1, fleet_cap=10, sig="deadbeef")
    await put_instance(client, keys, "web-c", now, state="draining", beat_age=9.0, fleet_cap=10)
    server_now = await server_time(client)
    await client.zadd(keys.leases, {
        "web-b:1": server_now + 30, "web-b:2": server_now + 30, "web-b:3": server_now + 30,
        "web-a:9": server_now - 1,  # expired: frees its slot, counted nowhere
        "web-gone:4": server_now + 30,  # its instance is gone, its lease not yet expired
    })

    doc = await fleet_snapshot(client, keys, now=now)

    assert doc["namespace"] == namespace
    assert [r["id"] for r in doc["instances"]] == ["web-a", "web-b", "web-c"]
    a, b, c = doc["instances"]
    assert (a["state"], a["phase"], a["phase_index"], a["phases_total"]) == \
        ("ready", "finalize", 7, 7)
    assert (b["state"], b["phase"], b["phase_index"]) == ("starting", "services", 5)
    assert (b["queue_depth"], b["queue_max"]) == (3, 50)
    assert (a["admitted"], a["rejected"]) == (12, 1)
    assert (a["version"], a["host"]) == ("0.1.0", "node-1")
    # heartbeat_age is on the server's clock, read after the writes: a moment later.
    assert a["heartbeat_age"] == pytest.approx(0.5, abs=0.25)
    assert c["heartbeat_age"] == pytest.approx(9.0, abs=0.25)
    assert b["time_in_phase"] == pytest.approx(2.0, abs=0.01)
    assert b["expected_ready_in"] == pytest.approx(2.5, abs=0.01)
    assert a["expected_ready_in"] is None  # only a starting instance has one
    assert (a["held_leases"], b["held_leases"], c["held_leases"]) == (0, 3, 0)
    assert "sig" not in b

    assert doc["totals"] == {
        "instances": 3,
        "by_state": {"starting": 1, "ready": 1, "draining": 1, "failed": 0, "stopped": 0},
        "ready": 1,
        "ready_ratio": 0.333,
        "held": 3,
        "connections": 0,
        "queue_max": 150,
        "leases": 4,
        "fleet_cap": 10,
        "admitted": 13,
        "rejected": 1,
    }


async def test_the_fleet_cap_is_the_instances_not_the_readers(
        redis_server: RedisServer, client: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    # A real instance with COORD_FLEET_MAX_QUEUE=7 and its gate: a reader that knows no
    # cap of its own shows the one the instance wrote.
    coord = Coordinator(Settings(redis_url=redis_server.url, namespace=namespace,
                                 instance_id="capped", fleet_max_queue=7))
    ConnectionGate(echo_app, coord)
    await coord.start()
    try:
        doc = await async_wait_until(lambda: _listed(client, keys, "capped"), 5,
                                     what="the instance in the fleet view")
        assert doc["totals"]["fleet_cap"] == 7
    finally:
        await coord.stop()
    now = time.time()
    await put_instance(client, keys, "web-a", now)  # reports no cap
    doc = await fleet_snapshot(client, keys, now=now)
    assert doc["totals"]["fleet_cap"] is None
    await put_instance(client, keys, "web-b", now, fleet_cap=25)
    await put_instance(client, keys, "web-c", now, fleet_cap=20)
    doc = await fleet_snapshot(client, keys, fleet_cap=99, now=now)
    assert doc["totals"]["fleet_cap"] == 20  # the most restrictive cap in force


async def _listed(client: redis.Redis, keys: Keys, instance_id: str) -> FleetDocument | None:
    doc = await fleet_snapshot(client, keys)
    return doc if [r["id"] for r in doc["instances"]] == [instance_id] else None


async def test_stale_members_are_pruned_and_never_shown(
        client: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    now = time.time()
    await put_instance(client, keys, "live", now)
    await put_instance(client, keys, "stale", now, beat_age=TTL + 1)  # heartbeat too old
    await put_instance(client, keys, "gone", now)
    await client.delete(keys.instance("gone"))  # hash expired, index entry left behind
    await client.hset(keys.instance("garbage"), mapping={"state": "ready", "ttl": "soon"})
    await client.zadd(keys.instances, {"garbage": now})

    doc = await fleet_snapshot(client, keys, now=now)

    assert [r["id"] for r in doc["instances"]] == ["live"]
    assert doc["totals"]["instances"] == 1
    assert {as_text(m) for m in await client.zrange(keys.instances, 0, -1)} == {"live"}

    await put_instance(client, keys, "stale", now, beat_age=TTL + 1)
    doc = await fleet_snapshot(client, keys, now=now, prune=False)
    assert [r["id"] for r in doc["instances"]] == ["live"]
    assert await client.zscore(keys.instances, "stale") is not None


async def test_pruning_spares_an_instance_that_heartbeat_since_it_was_read(
        client: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    await client.zadd(keys.instances, {"back": 100.0, "still-gone": 100.0})
    await client.zadd(keys.instances, {"back": 200.0})  # heartbeat after the reader's read
    prune = client.register_script(PRUNE_INDEX)
    removed = await prune(keys=[keys.instances], args=["back", "100.0", "still-gone", "100.0"])
    assert removed == 1
    assert {as_text(m) for m in await client.zrange(keys.instances, 0, -1)} == {"back"}


@pytest.mark.standalone_only("counts the commands sent on a plain connection to one server")
async def test_one_pipelined_round_trip_per_page_not_one_per_instance(
        redis_server: RedisServer, client: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    now = time.time()
    for i in range(7):
        await put_instance(client, keys, f"web-{i}", now)

    class Counting(redis.Connection):
        sent = 0

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            Counting.sent += 1
            await super().send_packed_command(command, check_health)

    pool = redis.ConnectionPool(connection_class=Counting, host="127.0.0.1",
                                port=redis_server.port)
    counted = redis.Redis.from_pool(pool)
    try:
        # Neither the connection's own handshake nor the one-time load of the page
        # script (EVALSHA, NOSCRIPT, SCRIPT LOAD) is the snapshot's steady cost.
        await fleet_snapshot(counted, keys, now=now, page_size=3)
        Counting.sent = 0
        doc = await fleet_snapshot(counted, keys, now=now, page_size=3)
        assert len(doc["instances"]) == 7
        assert Counting.sent == 1 + 3  # index, clock and leases; then pages of 3, 3, 1
    finally:
        await counted.aclose()


# -- the table ------------------------------------------------------------------------

def table_doc() -> dict[str, Any]:
    return {
        "namespace": "prod", "generated_at": 1_700_000_000.0,
        "instances": [
            {"id": "web-a1", "state": "ready", "phase": "finalize", "phase_index": 7,
             "phases_total": 7, "time_in_phase": 754.2, "queue_depth": 0, "queue_max": 50,
             "held_leases": 0, "admitted": 1204, "rejected": 3, "heartbeat_age": 0.4,
             "expected_ready_in": None, "version": "0.1.0", "host": "node-1"},
            {"id": "web-b22", "state": "starting", "phase": "services", "phase_index": 5,
             "phases_total": 7, "time_in_phase": 2.1, "queue_depth": 4, "queue_max": 50,
             "held_leases": 4, "admitted": 0, "rejected": 1, "heartbeat_age": 1.2,
             "expected_ready_in": 3.4, "version": "0.1.0", "host": "node-2"},
            {"id": "web-c", "state": "starting", "phase": None, "phase_index": None,
             "phases_total": 7, "time_in_phase": None, "queue_depth": None, "queue_max": None,
             "held_leases": 0, "admitted": None, "rejected": None, "heartbeat_age": 0.0,
             "expected_ready_in": None, "version": None, "host": None},
        ],
        "totals": {"instances": 3, "by_state": {"starting": 2, "ready": 1, "draining": 0,
                                                "failed": 0, "stopped": 0},
                   "ready": 1, "ready_ratio": 0.333, "held": 4, "connections": 0,
                   "queue_max": 100,
                   "leases": 4, "fleet_cap": 20, "admitted": 1204, "rejected": 4},
    }


def test_the_table_has_aligned_columns_a_progress_bar_and_a_totals_line() -> None:
    lines = render_fleet_table(table_doc()).splitlines()
    assert lines[0].startswith("fleet prod at ")
    assert lines[0].endswith(": 3 live instance(s)")
    header, rows, totals = lines[1], lines[2:5], lines[5]
    for column in ("STATE", "PHASE", "IN PHASE", "QUEUE", "LEASES", "ADMITTED", "REJECTED",
                   "HEARTBEAT", "READY IN", "VERSION", "HOST"):
        start = header.index(column)
        assert all(row[start - 2:start] == "  " and row[start] != " " for row in rows), column
    a, b, c = rows
    assert a.split()[:4] == ["web-a1", "ready", "finalize", "7/7"]
    assert "[#######]" in a and "12m34s" in a and "1204" in a and "0.4s ago" in a
    assert "services 5/7 [#####--]" in b and "4/50" in b and "~3.4s" in b
    assert c.split()[:3] == ["web-c", "starting", "-"]
    assert totals == ("totals: 3 instance(s) (2 starting, 1 ready); ready 33%; "
                      "held 4/100; open 0; leases 4/20 (fleet cap); admitted 1204; rejected 4")
    assert len(lines) == 6


def test_the_table_of_an_empty_fleet_and_of_a_fleet_without_a_cap() -> None:
    doc = table_doc()
    doc["instances"] = []
    doc["totals"] = {"instances": 0, "by_state": {"starting": 0, "ready": 0}, "ready": 0,
                     "ready_ratio": 0.0, "held": 0, "queue_max": 0, "leases": 0,
                     "fleet_cap": None, "admitted": 0, "rejected": 0}
    assert render_fleet_table(doc).splitlines()[1:] == [
        ("totals: 0 instance(s) (none); ready 0%; held 0/0; open 0; no fleet cap; "
         "admitted 0; rejected 0")]


async def test_an_index_member_that_is_not_utf8_does_not_break_the_view(
        client: redis.Redis, namespace: str) -> None:
    keys = Keys(namespace)
    now = time.time()
    await put_instance(client, keys, "web-1", now)
    await client.zadd(keys.instances, {b"\xff\xfe": now})  # garbage written by hand
    doc = await fleet_snapshot(client, keys, now=now)
    assert [r["id"] for r in doc["instances"]] == ["web-1"]


async def test_a_record_key_of_the_wrong_type_reads_as_gone_not_as_an_outage(
        client: redis.Redis, namespace: str) -> None:
    keys, now = Keys(namespace), time.time()
    await put_instance(client, keys, "web-a", now, state="ready")
    await client.set(keys.instance("web-b"), "not a hash")
    await client.zadd(keys.instances, {"web-b": now})
    doc = await fleet_snapshot(client, keys, now=now)
    assert [r["id"] for r in doc["instances"]] == ["web-a"]
    assert await client.zscore(keys.instances, "web-b") is None  # pruned as gone


async def test_a_snapshot_reads_a_bounded_part_of_a_huge_index_and_says_so(
        client: redis.Redis, namespace: str) -> None:
    """100,000 dead index members once made one snapshot take seconds and stall the
    instance. A snapshot reads the most recent ``max_instances`` members (the live ones
    heartbeat, so they come first), prunes the dead ones it read in batches, and says
    that it was truncated; members that cannot be ids are pruned unread."""
    keys, now = Keys(namespace), time.time()
    await client.zadd(keys.instances, {f"dead-{i}": now - 600 + i / 1000 for i in range(3000)})
    await client.zadd(keys.instances, {"x" * 5000: now + 10, "bad\x1b[2J": now + 9})
    for name in ("web-a", "web-b"):
        await put_instance(client, keys, name, now)
    doc = await fleet_snapshot(client, keys, now=now, max_instances=100)
    assert [r["id"] for r in doc["instances"]] == ["web-a", "web-b"]
    assert (doc["index_size"], doc["truncated"]) == (3004, True)
    assert await client.zcard(keys.instances) == 3004 - 98  # the 98 dead ones it read
    assert not await client.zscore(keys.instances, "x" * 5000)
    for _ in range(40):  # each snapshot prunes what it read: the index shrinks to the live
        doc = await fleet_snapshot(client, keys, now=now, max_instances=100)
    assert (doc["index_size"], doc["truncated"]) == (2, False)
    assert len(doc["instances"]) == 2
