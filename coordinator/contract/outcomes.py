"""What the gate counts and tells its observers, by name: the labels of its metrics and
the keys of the health document's ``admitted``."""

from __future__ import annotations

import enum


class Admitted(enum.StrEnum):
    """How a handshake was handed to the app: ``coordinator_admitted_total{how}``."""

    IMMEDIATE = "immediate"  # on arrival (a ready instance, or a pacer with a token)
    AFTER_HOLD = "after_hold"  # released from the hold queue


class Seen(enum.StrEnum):
    """What a gate observer (``observer(what, reason, waited)``) is told happened to a
    handshake: ``held`` when it starts waiting, then one end."""

    HELD = "held"
    RELEASED = "released"
    REJECTED = "rejected"  # with its Reason
    GAVE_UP = "gave_up"  # the client left while held
