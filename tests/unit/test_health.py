"""The library's health routes, mounted in a Starlette app as a user's service mounts them,
driven through the states an instance goes through (no Redis: the coordinator is never
started, and the routes make no Redis call)."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from coordinator.gate.gate import ConnectionGate
from coordinator.instance.coordinator import Coordinator
from coordinator.ops.health import HealthApp
from coordinator.settings import Settings
from tests.support import NoRedis


def make(**overrides: object) -> tuple[httpx.AsyncClient, Coordinator]:
    settings = Settings(instance_id="health-test", environment="test",
                        phases=("init", "services", "finalize"), **overrides)  # type: ignore[arg-type]
    coord = Coordinator(settings, client=NoRedis())  # type: ignore[arg-type]
    gate = ConnectionGate(Starlette(), coord)
    app = Starlette(routes=[Mount("/health", HealthApp(coord, gate))])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t"), coord


async def statuses(client: httpx.AsyncClient) -> dict[str, int]:
    return {route: (await client.get(f"/health/{route}")).status_code
            for route in ("live", "startup", "ready")}


async def test_each_route_follows_the_instance_through_start_ready_and_drain() -> None:
    client, coord = make()
    async with client:
        assert await statuses(client) == {"live": 200, "startup": 503, "ready": 503}
        async with coord.phase("init"):
            pass
        async with coord.phase("services"):
            assert await statuses(client) == {"live": 200, "startup": 503, "ready": 503}
        assert await statuses(client) == {"live": 200, "startup": 200, "ready": 200}
        body = (await client.get("/health/ready")).json()
        assert body["instance"] == "health-test" and body["state"] == "ready"
        assert body["phase"] == "services" and body["phases_total"] == 3
        assert body["redis"] == "down" and body["queue"]["max"] == 50
        assert body["fleet_cap"] == {"cap": None, "mode": "off", "held_leases": 0}
        coord.begin_drain()  # the startup probe already passed: only ready turns 503
        assert await statuses(client) == {"live": 200, "startup": 200, "ready": 503}
        assert (await client.get("/health/ready")).json()["state"] == "draining"


async def test_a_failed_phase_fails_liveness_so_the_platform_replaces_the_instance() -> None:
    client, coord = make()
    async with client:
        with pytest.raises(RuntimeError):
            async with coord.phase("init"):
                raise RuntimeError("no database")
        assert await statuses(client) == {"live": 503, "startup": 503, "ready": 503}
        assert (await client.get("/health/live")).json()["status"] == "failed"
        # SIGTERM: the instance drains, and still can never serve (it went back to 200).
        coord.begin_drain()
        assert await statuses(client) == {"live": 503, "startup": 503, "ready": 503}


async def test_a_failed_phase_is_logged_with_its_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    _client, coord = make()
    with pytest.raises(RuntimeError):
        async with coord.phase("init"):
            raise RuntimeError("no database")
    (record,) = [r for r in caplog.records if "failed" in r.getMessage()]
    assert record.levelname == "ERROR" and record.exc_info is not None
    assert "RuntimeError: no database" in caplog.text and "Traceback" in caplog.text


async def test_unknown_paths_and_methods_are_refused_and_head_has_no_body() -> None:
    client, _coord = make()
    async with client:
        assert (await client.get("/health/other")).status_code == 404
        assert (await client.post("/health/live")).status_code == 405
        head = await client.head("/health/live")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["cache-control"] == "no-store"
