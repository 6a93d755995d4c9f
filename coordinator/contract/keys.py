"""Every Redis key and channel name, in one place, so that writers and readers agree.

Each starts with the namespace as a hash tag, ``{N}:``: in a Redis Cluster every key
and channel of a namespace then lives on one slot, so that its Lua scripts, transactions
and fleet view work there as on one server (topology.py). One layout for every
topology: a namespace moves between a single server and a cluster without a change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# What an instance id and a namespace or phase name may be (settings.py checks them).
MAX_ID_CHARS = 128
MAX_NAME_CHARS = 64
ID_PATTERN = re.compile(rf"[A-Za-z0-9_.\-]{{1,{MAX_ID_CHARS}}}")
NAME_PATTERN = re.compile(rf"[A-Za-z0-9_.\-]{{1,{MAX_NAME_CHARS}}}")


def printable_name(value: object, limit: int) -> bool:
    """What a reader of Redis accepts as an id or a name another process wrote: text of
    1 to ``limit`` printable characters (no control characters, no lone surrogates).
    Looser than the patterns above on purpose: a display shows it, escaped, as text."""
    return isinstance(value, str) and 0 < len(value) <= limit and value.isprintable()


@dataclass(frozen=True)
class Keys:
    namespace: str = "coord"

    @property
    def prefix(self) -> str:
        """What every key and channel of the namespace starts with: ``{N}:``."""
        return f"{{{self.namespace}}}:"

    def instance(self, instance_id: str) -> str:
        """Hash: one instance's record; expires after its ``ttl``."""
        return f"{self.prefix}instance:{instance_id}"

    @property
    def instances(self) -> str:
        """Sorted set: member instance id, score its last heartbeat."""
        return f"{self.prefix}instances"

    @property
    def leases(self) -> str:
        """Sorted set: member ``<id>:<process>.<conn>``, score the lease's expiry (the
        server's clock)."""
        return f"{self.prefix}leases"

    @property
    def admit(self) -> str:
        """Hash: the fleet admission rate's token bucket (``tokens``, ``at``)."""
        return f"{self.prefix}admit"

    @property
    def phase_stats(self) -> str:
        """Hash: phase -> moving average duration (seconds) over recent startups."""
        return f"{self.prefix}phase_stats"

    @property
    def events(self) -> str:
        """Channel: every instance's transitions."""
        return f"{self.prefix}events"

    def instance_events(self, instance_id: str) -> str:
        """Channel: one instance's transitions."""
        return f"{self.prefix}instance:{instance_id}:events"

