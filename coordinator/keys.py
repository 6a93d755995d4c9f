"""Every Redis key and channel name, in one place, so that writers and readers agree."""

from __future__ import annotations

import re
from dataclasses import dataclass

# What an instance id and a namespace or phase name may be (settings.py checks the
# configured ones; readers of Redis drop data that names anything else).
ID_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass(frozen=True)
class Keys:
    namespace: str = "coord"

    def instance(self, instance_id: str) -> str:
        """Hash: one instance's record; expires after its ``ttl``."""
        return f"{self.namespace}:instance:{instance_id}"

    @property
    def instances(self) -> str:
        """Sorted set: member instance id, score its last heartbeat."""
        return f"{self.namespace}:instances"

    @property
    def leases(self) -> str:
        """Sorted set: member ``<id>:<conn>``, score the lease's expiry (server clock)."""
        return f"{self.namespace}:leases"

    @property
    def phase_stats(self) -> str:
        """Hash: phase -> moving average duration (seconds) over recent startups."""
        return f"{self.namespace}:phase_stats"

    @property
    def events(self) -> str:
        """Channel: every instance's transitions."""
        return f"{self.namespace}:events"

    def instance_events(self, instance_id: str) -> str:
        """Channel: one instance's transitions."""
        return f"{self.namespace}:instance:{instance_id}:events"

    def instance_id_from_key(self, key: str) -> str:
        return key[len(f"{self.namespace}:instance:"):]
