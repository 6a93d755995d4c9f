"""The admission decision: a pure function of what the instance knows, no I/O.

The gate (gate/gate.py) gathers the inputs, calls :func:`decide`, and carries out the
answer. Keeping the table here, free of Redis and ASGI, is what lets each row be tested
on its own.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from coordinator.contract.phases import PhasePlan, State
from coordinator.contract.rejection import MAX_RETRY_AFTER, Reason, retry_hint


class Action(enum.StrEnum):
    ACCEPT = "accept"
    HOLD = "hold"
    REJECT = "reject"


ACCEPT, HOLD, REJECT = Action.ACCEPT, Action.HOLD, Action.REJECT


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: Reason | None = None
    hold_for: float = 0.0  # seconds, for HOLD
    retry_after: int = 0  # seconds, for REJECT

    @property
    def accepted(self) -> bool:
        return self.action == ACCEPT


DRAIN_HINT = 1  # seconds: while draining, other instances are ready


FAILED_HINT = 5  # seconds: a failed instance will be replaced, not soon


def spread(hint: int, cap: int = MAX_RETRY_AFTER, rng: random.Random | None = None) -> int:
    """``hint`` plus a spread of its own: uniform in ``[hint, hint + max(1, hint // 2)]``;
    where that would pass ``cap``, uniform in the last tenth below it instead (at least a
    second wide), so that hints at the cap do not all land on the same second either.

    The hint is the earliest a retry can succeed (from what the fleet knows); the spread
    is what keeps the clients that were refused in the same moment from coming back in
    the same second (docs/guide.md: What a client sees).
    """
    hint = max(1, min(hint, cap))
    low, high = hint, hint + max(1, hint // 2)
    if high > cap:
        low, high = max(1, min(hint, cap - max(1, cap // 10))), cap
    return (rng or _RNG).randint(low, high)


_RNG = random.Random()


def decide(*, state: State, phase: str | None, plan: PhasePlan, has_slot: bool,
           expected_ready_in: float | None, wait_budget: float, max_queue_time: float,
           max_retry_after: int = MAX_RETRY_AFTER) -> Decision:
    """One row of the admission table (docs/guide.md: What a client sees).

    ``expected_ready_in`` is the estimate (seconds) of when the instance reaches the end
    of its ready phase, None when there are no statistics to estimate from. A rejection
    carries the hint :func:`rejection` gives its reason.
    """
    def refuse(reason: Reason) -> Decision:
        return rejection(reason, state=state, expected_ready_in=expected_ready_in,
                         wait_budget=wait_budget, max_retry_after=max_retry_after)

    if state is State.READY:
        return Decision(ACCEPT)
    if state is not State.STARTING:
        return refuse(reason_for(state))
    near = phase is None or plan.index(phase) is None or plan.is_near_ready(phase)
    if near:
        return Decision(HOLD, hold_for=max_queue_time) if has_slot else refuse(Reason.QUEUE_FULL)
    if expected_ready_in is None or expected_ready_in > wait_budget:
        return refuse(Reason.STARTING)
    if not has_slot:
        return refuse(Reason.QUEUE_FULL)
    return Decision(HOLD, hold_for=min(wait_budget, max_queue_time))


def rejection(reason: Reason, *, state: State, expected_ready_in: float | None,
              wait_budget: float, max_retry_after: int = MAX_RETRY_AFTER,
              paced_retry_after: float | None = None) -> Decision:
    """A refusal for ``reason`` with its retry hint: the earliest a retry can succeed,
    from what the instance knows (before :func:`spread` is added).

    Draining (and a connection closed at its maximum age): other instances are ready,
    ``DRAIN_HINT``. Failed: ``FAILED_HINT``. Ready but admitting at a paced rate: when
    the pacer could take one more (``paced_retry_after``). Starting: the estimate of
    when the ready phase completes, else the wait budget. At most ``max_retry_after``.
    """
    def hint(seconds: float | None, default: int = 1) -> int:
        return retry_hint(seconds, default, max_retry_after)

    if reason in (Reason.DRAINING, Reason.MAX_AGE):
        seconds = hint(DRAIN_HINT)
    elif reason is Reason.FAILED:
        seconds = hint(FAILED_HINT)
    elif state is State.READY:
        seconds = hint(paced_retry_after)
    else:
        seconds = hint(expected_ready_in, default=hint(wait_budget))
    return Decision(REJECT, reason, retry_after=seconds)


def reason_for(state: State) -> Reason:
    """Why a handshake is refused in ``state`` when nothing more particular applies: a
    hold that ended without a release while starting timed out."""
    return {State.FAILED: Reason.FAILED, State.STARTING: Reason.TIMEOUT}.get(
        state, Reason.DRAINING)
