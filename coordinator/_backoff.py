"""The one backoff: exponential growth, full jitter.

Used by every reconnect loop (the coordinator's Redis link, the dashboard's event
subscription) and by the client helper's retries. "Full jitter" draws each delay
uniformly from ``[0, min(cap, base * 2**(attempt - 1))]``: clients that failed together
come back spread over the whole window, not in step (the AWS Architecture Blog's
"Exponential Backoff And Jitter" compares the variants; this one sends the least work
to a recovering server).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delays for attempt 1, 2, 3, ...: a window of ``base`` seconds doubling up to ``cap``."""

    base: float
    cap: float

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.cap > 0):
            raise ValueError("expected base > 0 and cap > 0")

    def window(self, attempt: int) -> float:
        """The upper bound of attempt ``attempt``'s delay (1-based)."""
        exponent = min(max(attempt, 1) - 1, 63)  # 2**63 * base exceeds any cap
        return min(self.cap, self.base * 2.0 ** exponent)

    def delay(self, attempt: int) -> float:
        """A random delay in ``[0, window(attempt)]``."""
        return random.uniform(0.0, self.window(attempt))


# The Redis link: a first retry within 0.1 s, never more than 5 s apart.
RECONNECT = Backoff(base=0.1, cap=5.0)
