"""The local hold queue: bounded in count and in time, released first in, first out."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.contract.rejection import Reason
from coordinator.gate.holds import ADMIT, Hold, HoldQueue

DEADLINE = 5.0  # generous: only bounds a test that would otherwise hang


def held(entry: Hold | None) -> Hold:
    assert entry is not None, "the queue had no room"
    return entry


def has_room(queue: HoldQueue) -> bool:
    """Read afresh after each change (an assert on the property would pin its type)."""
    return queue.has_room


async def test_max_size_bounds_the_queue() -> None:
    queue = HoldQueue(max_size=2)
    first, second = queue.hold(30), queue.hold(30)
    assert first is not None and second is not None
    assert len(queue) == 2 and not queue.has_room
    assert queue.hold(30) is None
    assert queue.status()["depth"] == 2 and queue.status()["max"] == 2
    queue.reject_all(Reason.DRAINING)


async def test_zero_size_holds_nothing() -> None:
    queue = HoldQueue(max_size=0)
    assert not queue.has_room
    assert queue.hold(30) is None


async def test_forget_frees_a_slot_and_cancels_the_hold() -> None:
    queue = HoldQueue(max_size=1)
    entry = queue.hold(30)
    assert entry is not None and not queue.has_room
    queue.forget(entry)
    assert has_room(queue) and len(queue) == 0
    assert entry.future.cancelled()
    replacement = queue.hold(30)
    assert replacement is not None
    queue.forget(entry)  # forgetting twice is harmless and frees nothing else
    assert len(queue) == 1
    queue.reject_all(Reason.DRAINING)


async def test_release_all_resolves_every_hold_in_arrival_order() -> None:
    queue = HoldQueue(max_size=10)
    entries = [held(queue.hold(30)) for _ in range(5)]
    resumed: list[int] = []

    async def waiter(entry) -> None:
        assert await entry.future == ADMIT
        resumed.append(entry.conn)

    # Waiters start in reverse arrival order: only the release order can put them back.
    tasks = [asyncio.create_task(waiter(e)) for e in reversed(entries)]
    await asyncio.sleep(0)
    assert queue.release_all() == 5
    assert all(e.done for e in entries)  # all at once, not one handshake at a time
    assert len(queue) == 0 and queue.has_room
    await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
    assert resumed == [e.conn for e in entries]
    assert queue.status()["released_total"] == 5


async def test_a_hold_expires_on_its_own_timer() -> None:
    queue = HoldQueue(max_size=5)
    short = queue.hold(0.05)
    long = queue.hold(30)
    assert short is not None and long is not None
    # No other call on the queue: only its timer can resolve the short hold.
    assert await asyncio.wait_for(short.future, DEADLINE) == "timeout"
    assert len(queue) == 1 and not long.done
    queue.reject_all(Reason.DRAINING)
    assert long.future.result() == "draining"


async def test_expiry_follows_deadlines_not_arrival_order() -> None:
    queue = HoldQueue(max_size=5)
    late = queue.hold(0.3)
    early = queue.hold(0.05)
    assert late is not None and early is not None
    done, _ = await asyncio.wait({late.future, early.future}, timeout=DEADLINE,
                                 return_when=asyncio.FIRST_COMPLETED)
    assert done == {early.future} and early.future.result() == "timeout"
    assert await asyncio.wait_for(late.future, DEADLINE) == "timeout"
    assert len(queue) == 0


async def test_a_forgotten_hold_does_not_expire_later() -> None:
    queue = HoldQueue(max_size=5)
    gone = queue.hold(0.05)
    kept = queue.hold(0.1)
    assert gone is not None and kept is not None
    queue.forget(gone)
    assert await asyncio.wait_for(kept.future, DEADLINE) == "timeout"
    assert gone.future.cancelled()


async def test_released_holds_never_time_out() -> None:
    queue = HoldQueue(max_size=5)
    entry = queue.hold(0.05)
    assert entry is not None
    queue.release_all()
    after = queue.hold(0.05)  # the timer must still serve new holds
    assert after is not None
    assert await asyncio.wait_for(after.future, DEADLINE) == "timeout"
    assert entry.future.result() == ADMIT


async def test_reject_all_resolves_every_hold_with_the_reason() -> None:
    queue = HoldQueue(max_size=5)
    entries = [held(queue.hold(30)) for _ in range(3)]
    assert queue.reject_all(Reason.FAILED) == 3
    assert [e.future.result() for e in entries] == ["failed"] * 3
    assert len(queue) == 0 and queue.has_room


async def test_oldest_wait_reports_the_first_hold() -> None:
    clock = [10.0]
    queue = HoldQueue(max_size=5, clock=lambda: clock[0])
    assert queue.oldest_wait() == 0.0
    queue.hold(30)
    clock[0] = 12.5
    queue.hold(30)
    clock[0] = 13.0
    assert queue.oldest_wait() == pytest.approx(3.0)
    assert queue.status()["oldest_wait"] == pytest.approx(3.0)
    queue.reject_all(Reason.DRAINING)
