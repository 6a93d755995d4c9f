"""The fleet view end to end: real backends on real redis-servers, real WebSocket clients,
and the ``coordinator`` command watching from outside, as an operator would."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as redis

from coordinator._redis.client import make_redis
from coordinator.contract.keys import Keys
from coordinator.settings import DEFAULT_PHASES
from tests.support import (
    TIME_FIELDS,
    BackendProcess,
    CliProcess,
    Outcome,
    RedisServer,
    assert_chatted,
    async_wait_until,
    backend_env,
    chat,
    cli_env,
    get,
    reach_services,
    run_cli,
    start_all,
    subscribers,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

# Fields that move between two reads of an unchanged fleet (the heartbeat, and the ages).
MOVING = (*TIME_FIELDS, "heartbeat_at")


def instance_env(redis_url: str, namespace: str, instance: str,
                 services: float) -> dict[str, str]:
    return backend_env(redis_url=redis_url, namespace=namespace, instance=instance,
                       COORD_HEARTBEAT_INTERVAL="0.2",
                       BACKEND_PHASE_DURATIONS=f"services={services}")


async def fleet_view(backend: BackendProcess) -> dict[str, dict[str, Any]]:
    """``/fleet`` from ``backend``, by instance id ({} while Redis is unavailable)."""
    status, doc = await get(backend, "/fleet")
    return {r["id"]: r for r in doc["instances"]} if status == 200 else {}


async def hold(backend: BackendProcess, instance: str, count: int) -> list[asyncio.Task[Outcome]]:
    """``count`` clients connecting during ``services``: each is held until ready."""
    await reach_services(backend)
    return [asyncio.create_task(chat(backend.ws_url, f"{instance} client {i}", open_timeout=30))
            for i in range(count)]


async def shows_held(viewer: BackendProcess, instance: str, count: int) -> dict[str, Any] | None:
    row = (await fleet_view(viewer)).get(instance)
    if row and row["state"] == "starting" and row["queue_depth"] == count:
        return row
    return None


def frames(watch: CliProcess) -> list[list[str]]:
    """The watch's redraws (without a terminal: frames separated by a blank line)."""
    return [f.splitlines() for f in watch.output.split("\n\n") if f.strip()]


def rows(frame: list[str]) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in frame[2:-1]} if len(frame) > 3 else {}


def startup_steps() -> list[tuple[str, str]]:
    """What an instance publishes on its way: every phase started and completed, in order,
    and ``ready`` right after the ready phase completed."""
    steps = [(event, phase) for phase in DEFAULT_PHASES
             for event in ("phase_started", "phase_completed")]
    steps.insert(steps.index(("phase_completed", "services")) + 1, ("ready", "services"))
    return steps


def stable(doc: dict[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in doc.items() if k not in MOVING},
            "instances": [{k: v for k, v in r.items() if k not in MOVING}
                          for r in doc["instances"]]}


@pytest.mark.matrix
async def test_three_instances_through_their_phases_to_ready_with_held_clients(
        redis_server: RedisServer, namespace: str, start_backend: Any, follow_cli: Any) -> None:
    held = {"fleet-a": 1, "fleet-b": 2, "fleet-c": 3}
    env = cli_env(redis_server.url, namespace)
    client = make_redis(redis_server.url, namespace=namespace)
    try:
        events = follow_cli("events", "--json", env=env)
        watch = follow_cli("fleet", "--watch", "--interval", "0.5", env=env)
        await async_wait_until(lambda: _subscribed(client, Keys(namespace).events, 2), 10,
                               what="the CLI's events and watch subscribed")

        backends = await start_all(start_backend, [
            instance_env(redis_server.url, namespace, name, services=5) for name in held])
        views = {name: backends[(i + 1) % 3] for i, name in enumerate(held)}  # another's /fleet

        async def hold_and_watch(backend: BackendProcess, name: str) -> list[Outcome]:
            clients = await hold(backend, name, held[name])
            row = await async_wait_until(lambda: shows_held(views[name], name, held[name]), 10,
                                         what=f"{name} holding {held[name]} in the fleet view")
            assert (row["phase"], row["phase_index"], row["phases_total"]) == ("services", 5, 7)
            assert row["admitted"] == 0 and row["queue_max"] == 50
            await async_wait_until(
                lambda: any(rows(f).get(name, [])[1:5] == ["starting", "services", "5/7",
                                                           "[#####--]"]
                            and f"{held[name]}/50" in rows(f)[name] for f in frames(watch)),
                10, what=f"the watch showing {name} holding {held[name]}")
            return list(await asyncio.gather(*clients))

        outcomes = await asyncio.gather(*(hold_and_watch(b, n)
                                          for b, n in zip(backends, held, strict=True)))
        for name, chatted in zip(held, outcomes, strict=True):
            assert len(chatted) == held[name]
            for outcome in chatted:
                assert_chatted(outcome, name)

        async def all_done() -> dict[str, dict[str, Any]] | None:
            view = await fleet_view(backends[0])
            done = set(view) == set(held) and all(
                r["state"] == "ready" and r["phase_index"] == 7 for r in view.values())
            return view if done else None

        view = await async_wait_until(all_done, 20, what="all three ready in the fleet view")
        for name, count in held.items():
            assert (view[name]["queue_depth"], view[name]["admitted"]) == (0, count)

        status, doc = await get(backends[2], "/fleet")
        cli = await asyncio.to_thread(run_cli, "fleet", "--json", env=env)
        assert status == 200 and cli.returncode == 0, cli.stderr
        assert stable(json.loads(cli.stdout)) == stable(doc)
        assert doc["totals"]["by_state"]["ready"] == 3 and doc["totals"]["ready_ratio"] == 1.0
        assert doc["totals"]["held"] == 0 and doc["totals"]["admitted"] == 6

        table = await asyncio.to_thread(run_cli, "fleet", env=env)
        assert table.returncode == 0, table.stderr
        for name in held:
            assert rows(table.stdout.splitlines())[name][1:5] == \
                ["ready", "finalize", "7/7", "[#######]"]
        assert table.stdout.splitlines()[-1].startswith(
            "totals: 3 instance(s) (3 ready); ready 100%")

        await async_wait_until(lambda: frames(watch) and set(rows(frames(watch)[-1])) == set(held)
                               and all(r[1] == "ready" for r in rows(frames(watch)[-1]).values()),
                               10, what="the watch's last frame: all ready")
        assert watch.interrupt() == 0 and "Traceback" not in watch.stderr
        assert frames(watch)[0][0].endswith(": 0 live instance(s)")  # it watched from empty
    finally:
        await client.aclose()

    assert events.interrupt() == 0 and "Traceback" not in events.stderr
    seen: dict[str, list[tuple[str, str]]] = {name: [] for name in held}
    for line in events.lines:
        msg = json.loads(line)
        step = (msg["event"], msg["phase"])
        if msg["phase"] is not None and (not seen[msg["instance"]] or
                                         seen[msg["instance"]][-1] != step):
            seen[msg["instance"]].append(step)  # a re-publish repeats the current step
    for name in held:
        assert seen[name] == startup_steps(), name


async def _subscribed(client: redis.Redis, channel: str, count: int) -> bool:
    return await subscribers(client, channel) >= count


async def test_redis_restart_mid_startup_the_fleet_view_recovers_and_held_clients_are_released(
        own_redis: RedisServer, namespace: str, start_backend: Any, follow_cli: Any) -> None:
    names = ("restart-a", "restart-b")
    env = cli_env(own_redis.url, namespace)
    backends = await start_all(start_backend, [
        instance_env(own_redis.url, namespace, name, services=6) for name in names])
    watch = follow_cli("fleet", "--watch", "--interval", "0.3", env=env)
    clients = [await hold(b, name, 2) for b, name in zip(backends, names, strict=True)]
    for name in names:
        await async_wait_until(functools.partial(shows_held, backends[0], name, 2), 10,
                               what=f"{name} holding 2 in the fleet view")

    own_redis.kill()
    await async_wait_until(lambda: any(f[0].startswith("redis unreachable at ")
                                       for f in frames(watch)), 10, what="the watch's outage")
    assert (await get(backends[0], "/fleet"))[0] == 503
    own_redis.start()  # empty: it kept nothing

    client = redis.Redis.from_url(own_redis.url)
    try:
        async def recovered() -> dict[str, dict[str, Any]] | None:
            view = await fleet_view(backends[1])
            return view if set(view) == set(names) else None

        view = await async_wait_until(recovered, 15, what="both instances back in the view")
        for name in names:  # the full state came back, whichever side of ready it is on
            row = view[name]
            assert (row["state"], row["queue_depth"]) in (("starting", 2), ("ready", 0)), row
            await async_wait_until(functools.partial(
                _subscribed, client, Keys(namespace).instance_events(name), 1), 15,
                what=f"{name} re-subscribed")
    finally:
        await client.aclose()

    for name, tasks in zip(names, clients, strict=True):
        for outcome in await asyncio.gather(*tasks):
            assert_chatted(outcome, name)
    await async_wait_until(
        lambda: frames(watch) and {n: r[1] for n, r in rows(frames(watch)[-1]).items()}
        == dict.fromkeys(names, "ready"), 20, what="the watch: both ready")
    assert watch.interrupt() == 0 and "Traceback" not in watch.stderr


async def test_started_with_redis_down_the_instance_gates_alone_then_joins_the_fleet(
        own_redis: RedisServer, namespace: str, start_backend: Any) -> None:
    own_redis.kill()
    env = cli_env(own_redis.url, namespace)
    (backend,) = await start_all(start_backend, [
        instance_env(own_redis.url, namespace, "lonely", services=4)])

    unreachable = await asyncio.to_thread(run_cli, "fleet", env=env)
    assert unreachable.returncode == 2 and "Traceback" not in unreachable.stderr
    assert unreachable.stderr.startswith(
        f"coordinator: error: cannot reach Redis at {own_redis.url}")
    assert (await get(backend, "/fleet"))[0] == 503

    (client_task,) = await hold(backend, "lonely", 1)
    assert_chatted(await client_task, "lonely")  # held and released on local state alone
    status, body = await get(backend, "/health/ready")
    assert (status, body["redis"], body["admitted"]) == (200, "down", {"after_hold": 1})

    own_redis.start()
    client = redis.Redis.from_url(own_redis.url)
    try:
        row = await async_wait_until(
            lambda: _row_when(backend, "lonely",
                              lambda r: r["redis"] == "ok" and r["phase_index"] == 7), 15,
            what="the instance in the fleet view, its link up, its startup done")
        assert (row["state"], row["phase_index"], row["admitted"], row["queue_depth"]) == \
            ("ready", 7, 1, 0)
        await async_wait_until(lambda: _subscribed(
            client, Keys(namespace).instance_events("lonely"), 1), 15, what="subscribed")
    finally:
        await client.aclose()
    check = await asyncio.to_thread(run_cli, "check", "--instance", "lonely", env=env)
    assert (check.returncode, check.stdout.strip()) == (0, "lonely: ready (phase finalize 7/7)")


async def _row_when(backend: BackendProcess, name: str,
                    condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    row = (await fleet_view(backend)).get(name)
    return row if row is not None and condition(row) else None
