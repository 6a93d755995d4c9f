"""The admission table (docs/guide.md), row by row, against the pure decision function."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from coordinator.contract.phases import PhasePlan, State
from coordinator.contract.rejection import Reason
from coordinator.gate.admission import ACCEPT, HOLD, REJECT, decide, reason_for, rejection
from coordinator.settings import DEFAULT_PHASES

PLAN = PhasePlan(DEFAULT_PHASES, "services", near_ready_phases=1)
BUDGET = 3.0
MAX_HOLD = 30.0


def run(state: State = State.STARTING, phase: str | None = "services", *, has_slot: bool = True,
        expected: float | None = None, budget: float = BUDGET, max_hold: float = MAX_HOLD):
    return decide(state=state, phase=phase, plan=PLAN, has_slot=has_slot,
                  expected_ready_in=expected, wait_budget=budget, max_queue_time=max_hold)


@pytest.mark.parametrize("phase", [None, "init", "services", "finalize"])
@pytest.mark.parametrize("has_slot", [True, False])
def test_ready_accepts_at_once_whatever_else_is_true(phase: str | None, has_slot: bool) -> None:
    decision = run(State.READY, phase, has_slot=has_slot, expected=None)
    assert decision.action == ACCEPT
    assert decision.accepted


@pytest.mark.parametrize("phase", ["cache", "services", "websocket", None, "not-a-phase"])
def test_starting_near_ready_or_phase_unknown_with_a_slot_holds_up_to_max_queue_time(
        phase: str | None) -> None:
    decision = run(phase=phase, has_slot=True, expected=None)
    assert decision.action == HOLD
    assert decision.hold_for == MAX_HOLD


@pytest.mark.parametrize("phase", ["cache", "services", None])
def test_starting_near_ready_without_a_slot_rejects_queue_full(phase: str | None) -> None:
    decision = run(phase=phase, has_slot=False, expected=2.2)
    assert decision.action == REJECT
    assert decision.reason == "queue_full"
    assert decision.retry_after == 3  # the expected wait, rounded up


def test_near_ready_window_follows_the_plan() -> None:
    wide = PhasePlan(DEFAULT_PHASES, "services", near_ready_phases=3)
    narrow = PhasePlan(DEFAULT_PHASES, "services", near_ready_phases=0)
    common: dict[str, Any] = {"state": State.STARTING, "has_slot": True,
                              "expected_ready_in": None, "wait_budget": BUDGET,
                              "max_queue_time": MAX_HOLD}
    assert decide(phase="dependencies", plan=wide, **common).action == HOLD
    assert decide(phase="init", plan=wide, **common).action == REJECT
    assert decide(phase="services", plan=narrow, **common).action == HOLD
    assert decide(phase="cache", plan=narrow, **common).action == REJECT


@pytest.mark.parametrize("phase", ["init", "dependencies", "database"])
def test_earlier_phase_expected_ready_within_budget_holds_for_the_budget(phase: str) -> None:
    decision = run(phase=phase, expected=BUDGET - 0.5)
    assert decision.action == HOLD
    assert decision.hold_for == BUDGET


def test_earlier_phase_hold_never_exceeds_max_queue_time() -> None:
    decision = run(phase="database", expected=2.0, budget=10.0, max_hold=4.0)
    assert decision.action == HOLD
    assert decision.hold_for == 4.0


def test_earlier_phase_expected_exactly_at_the_budget_holds() -> None:
    assert run(phase="database", expected=BUDGET).action == HOLD


def test_earlier_phase_not_expected_in_time_rejects_starting_with_the_estimate() -> None:
    decision = run(phase="database", expected=7.3)
    assert decision.action == REJECT
    assert decision.reason == "starting"
    assert decision.retry_after == 8


def test_earlier_phase_without_statistics_rejects_starting() -> None:
    decision = run(phase="database", expected=None, budget=2.5)
    assert decision.action == REJECT
    assert decision.reason == "starting"
    assert decision.retry_after == 3  # no estimate: the wait budget, rounded up


def test_earlier_phase_in_time_but_no_slot_rejects_queue_full() -> None:
    decision = run(phase="database", expected=1.0, has_slot=False)
    assert decision.action == REJECT
    assert decision.reason == "queue_full"


@pytest.mark.parametrize("state", [State.DRAINING, State.STOPPED])
def test_draining_and_stopped_reject_as_draining(state: State) -> None:
    decision = run(state, "finalize", has_slot=True, expected=0.0)
    assert (decision.action, decision.reason) == (REJECT, "draining")
    assert decision.retry_after >= 1


def test_failed_rejects_as_failed() -> None:
    decision = run(State.FAILED, "services", has_slot=True, expected=0.5)
    assert (decision.action, decision.reason) == (REJECT, "failed")
    assert decision.retry_after >= 1


def test_every_rejection_carries_an_integer_retry_after_of_at_least_one() -> None:
    phases = [None, "bogus", *DEFAULT_PHASES]
    estimates = [None, 0.0, 1e-9, 0.4, 2.9999, 3.0, 41.5, float("inf"), float("nan"), -5.0]
    budgets = [0.001, 0.5, 3.0]
    rejections = 0
    for state, phase, slot, expected, budget in itertools.product(
            list(State), phases, [True, False], estimates, budgets):
        decision = run(state, phase, has_slot=slot, expected=expected, budget=budget)
        assert decision.action in (ACCEPT, HOLD, REJECT)
        if decision.action == REJECT:
            rejections += 1
            assert type(decision.retry_after) is int, decision
            assert decision.retry_after >= 1, decision
            assert decision.reason in ("starting", "queue_full", "draining", "failed"), decision
        elif decision.action == HOLD:
            assert 0 < decision.hold_for <= MAX_HOLD
    assert rejections > 100  # the sweep really exercised the rejection rows


def test_every_hint_is_capped_by_max_retry_after_whatever_the_estimate() -> None:
    from coordinator.contract.rejection import retry_hint
    assert retry_hint(1e300) == 30 and retry_hint(float("inf"), default=10 ** 9) == 30
    assert retry_hint(1e300, cap=7) == 7 and retry_hint(None, default=4, cap=3) == 3
    assert retry_hint(-5.0) == 1


@pytest.mark.parametrize(("state", "phase", "has_slot", "expected"), [
    (State.STARTING, "services", False, 4.2), (State.STARTING, "init", True, None),
    (State.STARTING, "init", True, 40.0), (State.STARTING, "cache", False, 1.0),
    (State.DRAINING, "services", True, None), (State.STOPPED, None, True, None),
    (State.FAILED, "database", True, 2.0)])
def test_a_rows_rejection_is_the_one_the_gate_gives_its_reason_later(
        state: State, phase: str | None, has_slot: bool, expected: float | None) -> None:
    """One hint per reason: the table's rows and the refusals the gate decides after the
    row (the queue or the fleet cap filled meanwhile) come from admission.rejection."""
    row = run(state, phase, has_slot=has_slot, expected=expected)
    assert row.action == REJECT and row.reason is not None
    assert row == rejection(row.reason, state=state, expected_ready_in=expected,
                            wait_budget=BUDGET)


def test_a_refusal_while_ready_is_paced_and_a_held_end_without_release_is_by_state() -> None:
    paced = rejection(Reason.QUEUE_FULL, state=State.READY, expected_ready_in=None,
                      wait_budget=BUDGET, paced_retry_after=2.5)
    assert paced.retry_after == 3
    assert [reason_for(s) for s in State] == [Reason.TIMEOUT, Reason.DRAINING, Reason.DRAINING,
                                              Reason.FAILED, Reason.DRAINING]
