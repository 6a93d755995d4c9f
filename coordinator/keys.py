"""Every Redis key and channel name, in one place, so that writers and readers agree."""

from __future__ import annotations

from dataclasses import dataclass


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
