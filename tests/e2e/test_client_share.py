"""One client address cannot take the whole hold queue (issue 19, item 10): with
COORD_MAX_QUEUE_PER_CLIENT a real backend under uvicorn holds at most that many
handshakes per address and refuses the next ones cleanly (503 ``client_share``), while
another address is still held."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support import (
    assert_clean_rejection,
    backend_env,
    chat,
    health,
    wait_for_phase,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

SHARE = 2


async def test_one_address_holds_at_most_its_share_and_another_is_still_held(
        start_backend: Any, redis_server: Any, namespace: str) -> None:
    backend = start_backend(backend_env(
        redis_url=redis_server.url, namespace=namespace, COORD_MAX_QUEUE="10",
        COORD_MAX_QUEUE_PER_CLIENT=str(SHARE),
        BACKEND_PHASE_DURATIONS="cache=0.2,services=60"))
    await asyncio.to_thread(wait_for_phase, backend, ("services",))

    def held(n: int) -> None:
        wait_until(lambda: health(backend)[1]["queue"]["depth"] == n, 10, what=f"{n} held")

    first = [asyncio.create_task(chat(backend.ws_url, open_timeout=None))
             for _ in range(SHARE)]
    try:
        await asyncio.to_thread(held, SHARE)
        refused = await asyncio.gather(*(chat(backend.ws_url) for _ in range(3)))
        for outcome in refused:
            assert_clean_rejection(outcome, "http", "client_share")
        other = [asyncio.create_task(chat(backend.ws_url, open_timeout=None,
                                          local_addr=("127.0.0.2", 0)))
                 for _ in range(SHARE)]
        first += other
        await asyncio.to_thread(held, 2 * SHARE)
        status, body = health(backend)
        assert status == 503 and body["rejected"]["client_share"] == 3, body
        assert not any(task.done() for task in first)  # still held, all four
    finally:
        for task in first:
            task.cancel()
        await asyncio.gather(*first, return_exceptions=True)
    assert "Traceback" not in backend.log()
