"""The demo's report from what its clients saw: who was held, the hold-time percentiles,
the failures by kind. Built from hand-made results, so every number is known."""

from __future__ import annotations

from coordinator.client import CONNECTED, Attempt
from demo.storm import SERVED, ClientResult, Report, percentile

READY_AT = {"a": 100.0, "b": 200.0}


def served(index: int, instance: str, started_at: float, duration: float,
           refused_first: bool = False) -> ClientResult:
    attempts = [Attempt(1, "http 503", 0.01, 1.0, "queue_full")] if refused_first else []
    attempts.append(Attempt(len(attempts) + 1, CONNECTED, duration))
    return ClientResult(index, SERVED, attempts, instance, started_at)


def test_holds_are_the_handshakes_that_started_before_their_instance_was_ready() -> None:
    results = [
        served(0, "a", 99.0, 1.0),  # held: started 1 s before a's ready
        served(1, "a", 97.0, 3.0),
        served(2, "b", 196.0, 4.0, refused_first=True),  # refused once, then held
        served(3, "b", 198.0, 2.0),
        served(4, "a", 100.5, 0.01),  # after a's ready: admitted at once
        served(5, "b", 250.0, 0.02),
        ClientResult(6, "close 1011", [Attempt(1, "close 1011", 0.1)]),
        ClientResult(7, "gave up", [Attempt(n, "http 503", 0.01, 1.0) for n in (1, 2)]),
        ClientResult(8, "error: bad echo", [Attempt(1, CONNECTED, 0.01)]),
    ]
    report = Report.build(True, results, READY_AT)
    assert (report.clients, report.served) == (9, 6)
    assert (report.held_then_admitted, report.admitted_at_once) == (4, 2)
    # Nearest rank over the holds 1, 2, 3, 4: p50 is the 2nd, p99 the 4th.
    assert (report.hold_p50, report.hold_p99) == (2.0, 4.0)
    assert report.handshakes == 11
    assert report.rejections == 3  # attempts that carried a retry hint
    assert report.clients_rejected_then_served == 1
    assert (report.closed_1011, report.gave_up) == (1, 1)
    assert report.other_failures == {"error: bad echo": 1}


def test_no_holds_no_percentiles() -> None:
    report = Report.build(False, [served(0, "a", 150.0, 0.01)], READY_AT)
    assert (report.held_then_admitted, report.hold_p50, report.hold_p99) == (0, None, None)


def test_nearest_rank_percentile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, p) for p in (1, 50, 99, 100)] == [1.0, 50.0, 99.0, 100.0]
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
