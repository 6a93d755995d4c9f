"""The client helper's retry policy on its own: the defaults the guide documents, full
jitter, the server's hint as a floor, and the bounds it refuses."""

from __future__ import annotations

import re
import statistics
from typing import Any

import pytest
from tenacity import RetryCallState

from coordinator.client import Attempt, RetryPolicy, _delay, _Refused
from coordinator.settings import Settings
from tests.support import ROOT


def guide_section(title: str) -> str:
    """A section of docs/guide.md, its whitespace runs made single spaces."""
    text = (ROOT / "docs" / "guide.md").read_text()
    start = text.index(f"\n## {title}\n")
    return " ".join(text[start:text.index("\n## ", start + 1)].split())


def documented(pattern: str, section: str) -> float:
    """The one number ``pattern`` (a regex with one group) finds in ``section``."""
    (found,) = re.findall(pattern, section)
    return float(found)


def test_the_defaults_are_the_ones_the_guide_documents() -> None:
    section = guide_section("Client helper")
    policy = RetryPolicy()
    example = re.search(r"RetryPolicy\(max_attempts=(\d+), max_time=(\d+)\) # the defaults",
                        section)
    assert example, "the guide's example names the defaults"
    assert (policy.max_attempts, policy.max_time) == (int(example[1]), float(example[2]))
    assert policy.base_delay == documented(r"`base_delay` ([\d.]+) s", section)
    assert policy.max_delay == documented(r"`max_delay` ([\d.]+) s", section)
    assert policy.open_timeout == documented(r"`open_timeout` defaults to ([\d.]+) s", section)
    assert policy.first_message_timeout == documented(
        r"\(`first_message_timeout`, ([\d.]+) s\)", section)
    # "longer than the gate's 30 s maximum hold, so a held handshake is not abandoned"
    assert documented(r"longer than the gate's ([\d.]+) s maximum hold", section) \
        == Settings().max_queue_time < policy.open_timeout


def test_full_jitter_stays_in_a_doubling_window_and_spreads() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)
    for attempt, window in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        samples = [policy.jitter(attempt) for _ in range(400)]
        assert min(samples) >= 0 and max(samples) <= window
        assert statistics.pstdev(samples) > window / 5  # spread, not a fixed delay


def test_the_servers_hint_is_a_floor_under_the_jitter() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0)
    state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    state.attempt_number = 3
    state.set_exception((_Refused, _Refused(Attempt(3, "http 503", 0.0, 2.0)), None))
    delays = [_delay(policy, state) for _ in range(200)]
    assert min(delays) >= 2.0 and max(delays) <= 2.0 + 2.0


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"max_time": 0},
                                    {"base_delay": -1}, {"first_message_timeout": 0}])
def test_policy_rejects_bad_bounds(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RetryPolicy(**kwargs)
