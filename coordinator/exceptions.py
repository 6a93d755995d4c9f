"""One base error and narrow subclasses that carry their context."""

from __future__ import annotations


class CoordinatorError(Exception):
    """Base class of every error this package raises to its caller (errors of Redis
    itself reach the caller as redis-py's own, where a call is documented to raise)."""


class UsageError(CoordinatorError, ValueError):
    """An argument the API cannot take (an unknown role or setting, a bad client policy)."""


class PhaseError(CoordinatorError, RuntimeError):
    """A startup phase run where it cannot be: by a follower, unknown to the plan, or
    after the instance failed, began draining or stopped."""


class ConfigError(CoordinatorError, ValueError):
    """A ``COORD_*`` (or ``BACKEND_*``) variable holds a value that cannot be used."""

    def __init__(self, variable: str, value: object, problem: str) -> None:
        self.variable = variable
        self.value = value
        self.problem = problem
        super().__init__(f"{variable}={value!r}: {problem}")


class InvalidMessage(CoordinatorError):
    """A pub/sub message that must be dropped; ``reason`` names the counter it bumps."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        # The detail may quote the hostile data (a field's name, an instance id): escaped,
        # so that no line break, escape sequence or lone surrogate reaches a log as is.
        self.detail = ascii_safe(detail)
        super().__init__(f"{reason}: {self.detail}" if detail else reason)


def ascii_safe(text: str) -> str:
    """``text`` with every character that is not printable escaped as Python would
    (``\\n``, ``\\x1b``, ``\\ud800``); printable text, any script, stays as it is."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
