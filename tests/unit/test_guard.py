"""HTTP routes that need what the ready phase builds: the guard answers 503 with the
gate's hint until the instance is ready (``GET /`` once answered 200 during startup
while WebSockets were held), then lets every request through."""

from __future__ import annotations

import httpx
from fastapi import Depends, FastAPI

from coordinator.guard import require_ready
from coordinator.instance.coordinator import Coordinator
from coordinator.settings import DEFAULT_PHASES, Settings
from tests.support import NoRedis, run_phases


def app_for(coord: Coordinator) -> FastAPI:
    app = FastAPI()

    @app.get("/rooms", dependencies=[Depends(require_ready(coord))])
    async def rooms() -> list[str]:
        return ["lobby"]

    @app.get("/open")
    async def unguarded() -> str:
        return "ok"

    return app


async def test_a_guarded_route_is_503_with_a_hint_until_ready_then_passes() -> None:
    coord = Coordinator(Settings(instance_id="g-1", environment="test"),
                        client=NoRedis())  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app_for(coord))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await run_phases(coord, *DEFAULT_PHASES[:2])
        early = await client.get("/rooms")
        assert early.status_code == 503
        retry_after = int(early.headers["retry-after"])
        assert 1 <= retry_after <= coord.settings.max_retry_after
        assert early.json() == {"detail": {"reason": "starting", "retry_after": retry_after}}
        assert (await client.get("/open")).status_code == 200  # only what asks is guarded

        await run_phases(coord, *DEFAULT_PHASES[2:])
        assert (await client.get("/rooms")).json() == ["lobby"]

        coord.begin_drain()
        draining = await client.get("/rooms")
        assert draining.status_code == 503 and draining.json()["detail"]["reason"] == "draining"
