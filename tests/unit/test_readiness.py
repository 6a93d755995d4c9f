"""The ready signal's pure parts: the progressive re-read intervals and the forward-only
merge of statuses from pub/sub, the hash and re-reads."""

from __future__ import annotations

import itertools
import time

import fakeredis
import pytest

from coordinator.contract.events import Message
from coordinator.contract.phases import PhasePlan, State
from coordinator.instance.coordinator import Coordinator
from coordinator.instance.follower import Follower
from coordinator.instance.status import (
    Status,
    advance,
    progressive_intervals,
    status_from_message,
    status_from_record,
)
from coordinator.settings import DEFAULT_PHASES, Settings

PLAN = PhasePlan(DEFAULT_PHASES, "services")
BORN = 1000.0


def test_progressive_intervals_grow_from_50_ms_to_1_s_and_stay() -> None:
    got = list(itertools.islice(progressive_intervals(), 10))
    assert got == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_progressive_intervals_never_end() -> None:
    tail = list(itertools.islice(progressive_intervals(), 1000, 1005))
    assert tail == [1.0] * 5


def starting(phase: str, started_at: float | None = BORN) -> Status:
    return Status(State.STARTING, phase, PLAN.index(phase), None, started_at)


def test_advance_moves_forward_through_phases() -> None:
    view = advance(starting("init"), starting("database"))
    assert view.phase == "database"
    view = advance(view, Status(State.READY, "services", 5, None, BORN))
    assert view.state is State.READY


def test_advance_never_moves_back() -> None:
    ready = Status(State.READY, "services", 5, None, BORN)
    assert advance(ready, starting("cache")) == ready  # a late message
    assert advance(starting("cache"), starting("database")).phase == "cache"
    assert advance(ready, ready) == ready  # a duplicate
    failed = Status(State.FAILED, "services", 5, None, BORN)
    assert advance(failed, ready) == failed
    stopped = Status(State.STOPPED, "services", 5, None, BORN)
    assert advance(stopped, Status(State.DRAINING, "finalize", 7, None, BORN)) == stopped


def test_later_phases_of_a_ready_instance_keep_it_ready() -> None:
    view = advance(Status(State.READY, "services", 5, None, BORN),
                   Status(State.READY, "websocket", 6, None, BORN))
    assert (view.state, view.phase) == (State.READY, "websocket")


def test_a_new_incarnation_resets_the_view() -> None:
    old_life = Status(State.STOPPED, "finalize", 7, None, BORN)
    reborn = starting("init", started_at=BORN + 60)
    assert advance(old_life, reborn) == reborn
    ready = Status(State.READY, "services", 5, None, BORN)
    assert advance(ready, reborn).state is State.STARTING


def test_news_from_an_earlier_incarnation_is_ignored() -> None:
    current = starting("cache", started_at=BORN + 60)
    stale_ready = Status(State.READY, "services", 5, None, BORN)
    assert advance(current, stale_ready) == current


def test_a_status_without_incarnation_joins_the_known_one() -> None:
    view = advance(starting("cache"), Status(State.READY, "services", 5, None, None))
    assert view.state is State.READY and view.started_at == BORN
    first = advance(Status(), starting("cache", started_at=BORN))
    assert first.started_at == BORN


def msg(event: str, phase: str | None, **extra: object) -> Message:
    return Message("web-1", event, phase, PLAN.index(phase), BORN + 1, extra)


@pytest.mark.parametrize(("event", "phase", "state"), [
    ("phase_started", "cache", State.STARTING),
    ("phase_completed", "cache", State.STARTING),
    ("phase_started", "services", State.STARTING),
    ("phase_completed", "services", State.READY),
    ("ready", "services", State.READY),
    ("phase_started", "websocket", State.READY),
    ("failed", "database", State.FAILED),
    ("draining", "finalize", State.DRAINING),
    ("stopped", None, State.STOPPED),
])
def test_status_from_message(event: str, phase: str | None, state: State) -> None:
    status = status_from_message(msg(event, phase, started_at=BORN), PLAN)
    assert status is not None
    assert (status.state, status.phase, status.started_at) == (state, phase, BORN)


def test_status_from_message_ignores_unknown_phases() -> None:
    assert status_from_message(msg("phase_started", "warmup"), PLAN) is None


def test_status_from_record() -> None:
    status = status_from_record({"state": "ready", "phase": "services", "phase_index": 5,
                                 "started_at": BORN, "phase_started_at": "1001.5"})
    assert status == Status(State.READY, "services", 5, 1001.5, BORN)
    assert status_from_record({"state": "exploded"}) is None
    assert status_from_record({}) is None


@pytest.mark.parametrize("started_at", [1795719285.8811235, 1795719285.8811225, 1e9 + 0.1234567])
def test_the_same_incarnation_at_hash_precision_is_still_the_same(started_at: float) -> None:
    # The hash stores started_at to the microsecond, a message carries it in full: the
    # two must not read as different lives (rounding up made a message look older).
    from_hash = float(f"{started_at:.6f}")
    current = Status(State.STARTING, "services", 5, None, from_hash)
    ready = Status(State.READY, "services", 5, None, started_at)
    assert advance(current, ready).state is State.READY
    late = Status(State.STARTING, "cache", 4, None, started_at)
    assert advance(Status(State.READY, "services", 5, None, from_hash), late).state \
        is State.READY


def test_untrusted_evidence_moves_the_view_within_starting_but_never_out_of_it() -> None:
    unknown = Status()
    replayed_ready = Status(State.READY, "services", 5, None, BORN)
    assert advance(unknown, replayed_ready, trusted=False) == unknown
    assert advance(unknown, replayed_ready).state is State.READY  # trusted: as before
    assert advance(starting("init"), starting("cache"), trusted=False).phase == "cache"
    assert advance(starting("cache"), Status(State.DRAINING, "cache", 4, None, BORN),
                   trusted=False) == starting("cache")
    reborn = starting("init", started_at=BORN + 60)
    assert advance(replayed_ready, reborn, trusted=False) == reborn  # a newer life holds


# -- a follower's phases of its own ------------------------------------------------------

def ready_message(ts: float) -> Message:
    return Message("web-1", "phase_completed", "services", PLAN.index("services"), ts,
                   {"state": "ready", "started_at": BORN})


async def test_a_follower_with_phases_of_its_own_admits_only_once_its_ready_phase_is_done(
        ) -> None:
    coord = Coordinator(Settings(instance_id="web-1", environment="test"), role="follower",
                        client=fakeredis.aioredis.FakeRedis())
    follower = coord._role
    assert isinstance(follower, Follower)
    async with coord.phase("init"):
        pass
    follower.on_message(ready_message(time.time()))
    assert coord.state is State.STARTING  # the instance is ready, this process is not
    async with coord.phase("services"):
        assert coord.state is State.STARTING
    assert (coord.state.value, coord.current_phase) == ("ready", "services")
    await coord.stop()


async def test_a_follower_without_phases_of_its_own_follows_the_instance_alone() -> None:
    coord = Coordinator(Settings(instance_id="web-1", environment="test"), role="follower",
                        client=fakeredis.aioredis.FakeRedis())
    coord._role.on_message(ready_message(time.time()))
    assert coord.state is State.READY
    await coord.stop()


async def test_a_followers_own_phase_that_raises_fails_this_process() -> None:
    coord = Coordinator(Settings(instance_id="web-1", environment="test"), role="follower",
                        client=fakeredis.aioredis.FakeRedis())
    with pytest.raises(RuntimeError, match="no pool"):
        async with coord.phase("services"):
            raise RuntimeError("no pool")
    coord._role.on_message(ready_message(time.time()))
    assert coord.state is State.FAILED
    await coord.stop()
