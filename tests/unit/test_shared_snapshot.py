"""SharedSnapshot: one read for every concurrent reader, a cache of max_age, errors shared,
nothing cached served while the link is down (a stub reader, a fake clock)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from coordinator.fleet.view import SharedSnapshot


class Reader:
    def __init__(self) -> None:
        self.reads = 0
        self.gate = asyncio.Event()
        self.fail = False

    async def snapshot(self) -> dict[str, Any]:
        self.reads += 1
        await self.gate.wait()
        if self.fail:
            raise ConnectionError("down")
        return {"read": self.reads}


async def test_one_read_for_all_then_a_cache_then_a_new_read() -> None:
    reader, now, up = Reader(), [0.0], [True]
    shared = SharedSnapshot(reader, max_age=1.0, clock=lambda: now[0],
                            usable=lambda: up[0])
    readers = [asyncio.create_task(shared.get()) for _ in range(100)]
    await asyncio.sleep(0)
    reader.gate.set()
    assert {d["read"] for d in await asyncio.gather(*readers)} == {1}
    now[0] = 0.9
    assert (await shared.get())["read"] == 1 and reader.reads == 1
    now[0] = 1.0
    assert (await shared.get())["read"] == 2
    up[0] = False  # the link is down: no cached document, a read of its own
    reader.fail = True
    with pytest.raises(ConnectionError):
        await shared.get()
    assert reader.reads == 3


async def test_a_reader_that_leaves_does_not_cancel_the_others_read() -> None:
    reader = Reader()
    shared = SharedSnapshot(reader)
    first, second = asyncio.create_task(shared.get()), asyncio.create_task(shared.get())
    await asyncio.sleep(0)
    first.cancel()
    reader.gate.set()
    assert (await second)["read"] == 1


async def test_closing_cancels_the_read_in_flight_and_waits_for_it() -> None:
    """The read belongs to the snapshot, not to a reader: at shutdown its owner ends it."""
    reader = Reader()
    shared = SharedSnapshot(reader)
    waiting = asyncio.create_task(shared.get())
    async with asyncio.timeout(5):  # the read has started: it waits on the reader's gate
        while reader.reads == 0:
            await asyncio.sleep(0)
    flight = shared._flight
    assert flight is not None and not flight.done() and reader.reads == 1
    await shared.aclose()
    assert flight.cancelled()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await shared.aclose()  # twice, or with nothing in flight: nothing to do
