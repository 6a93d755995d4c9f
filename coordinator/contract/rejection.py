"""What a refused client is told: the reason, the retry hint's bounds, the close codes and
the rejection JSON (``{"reason": ..., "retry_after": N}``)."""

from __future__ import annotations

import enum
import json
import math


class Reason(enum.StrEnum):
    """Why a handshake was refused: the ``reason`` of the rejection JSON, and the label of
    ``coordinator_rejected_total`` (``gave_up``: the client left while held, never sent)."""

    STARTING = "starting"
    QUEUE_FULL = "queue_full"
    FLEET_CAP = "fleet_cap"
    CLIENT_SHARE = "client_share"  # one client address holds its share of the queue already
    TIMEOUT = "timeout"
    DRAINING = "draining"
    FAILED = "failed"
    MAX_AGE = "max_age"  # an open connection closed at COORD_MAX_CONNECTION_AGE (1012)
    GAVE_UP = "gave_up"


CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_SERVICE_RESTART = 1012
# The same closes where the server sends no code from 1001 to 2999 (daphne: autobahn lets
# an application close with 1000 or 3000-4999 only): their private-use twins.
PRIVATE_CLOSE = {CLOSE_TRY_AGAIN_LATER: 4013, CLOSE_SERVICE_RESTART: 4012}
MAX_REASON_BYTES = 123  # a WebSocket close reason's limit
MAX_RETRY_AFTER = 30  # seconds: COORD_MAX_RETRY_AFTER's default
MAX_HINT = 86400  # reject()'s own ceiling on a hint; the gate's are COORD_MAX_RETRY_AFTER


def retry_hint(seconds: float | None, default: int = 1, cap: int = MAX_RETRY_AFTER) -> int:
    """An integer Retry-After from 1 to ``cap`` seconds, whatever Redis data said."""
    if not isinstance(seconds, int | float) or not math.isfinite(seconds):
        seconds = default
    return max(1, min(cap, math.ceil(seconds)))


def reason_payload(reason: str, retry_after: int) -> str:
    """``{"reason": ..., "retry_after": N}``: always valid JSON of at most 123 bytes (a
    close reason's limit), the reason shortened if it must be."""
    retry_after = retry_hint(retry_after, cap=MAX_HINT)
    while True:
        text = json.dumps({"reason": reason, "retry_after": retry_after}, separators=(",", ":"))
        if len(text.encode()) <= MAX_REASON_BYTES:
            return text
        reason = reason[:len(reason) - max(1, len(text.encode()) - MAX_REASON_BYTES)]
