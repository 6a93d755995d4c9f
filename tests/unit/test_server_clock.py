"""ServerClock: the Redis server's clock, estimated from TIME replies (_redis/clock.py)."""

from __future__ import annotations

from coordinator._redis.clock import ServerClock, server_seconds


def clocks(wall: float = 1000.0) -> tuple[ServerClock, list[float], list[float]]:
    """A ServerClock on a fake wall clock and a fake monotonic clock (both mutable)."""
    w, m = [wall], [50.0]
    return ServerClock(lambda: w[0], lambda: m[0]), w, m


def test_before_any_reply_it_is_the_wall_clock_and_unsynced() -> None:
    clock, _w, m = clocks()
    assert not clock.synced and clock.now() == 1000.0
    m[0] += 2.0
    assert clock.now() == 1002.0


def test_a_reply_is_taken_at_the_middle_of_its_round_trip() -> None:
    clock, _w, m = clocks()
    clock.observe(5000.0, sent=50.0, received=50.2)  # answered within 0.2 s
    assert clock.synced and abs(clock.uncertainty() - 0.1) < 1e-9
    m[0] = 50.2
    assert abs(clock.now() - 5000.1) < 1e-9


def test_a_step_of_the_hosts_wall_clock_changes_nothing() -> None:
    clock, w, m = clocks()
    clock.observe(5000.0, sent=50.0, received=50.0)
    w[0] -= 60.0  # the host's clock steps back: the estimate rides the monotonic clock
    m[0] += 1.0
    assert clock.now() == 5001.0


def test_a_noisier_reply_that_agrees_is_not_taken_one_that_disagrees_is() -> None:
    clock, _w, m = clocks()
    clock.observe(5000.0, sent=50.0, received=50.002)
    clock.observe(5000.4, sent=50.0, received=51.0)  # 0.5 s uncertain, agrees: ignored
    m[0] = 50.001
    assert abs(clock.now() - 5000.0) < 1e-6
    clock.observe(4900.0, sent=51.0, received=51.002)  # the server's clock stepped back
    m[0] = 51.001
    assert abs(clock.now() - 4900.0) < 1e-6


def test_time_replies_are_parsed_or_refused() -> None:
    assert server_seconds((12, 500000)) == 12.5
    assert server_seconds([b"12", b"250000"]) == 12.25
    assert server_seconds(None) is None and server_seconds((1,)) is None
    assert server_seconds(("x", "y")) is None
