"""Hold WebSocket handshakes until the instance is ready, fleet-wide, through Redis.

The public surface is these names (docs/guide.md): a :class:`Coordinator` per instance,
the :class:`ConnectionGate` in front of the app, its :class:`Settings`, the health routes
(:class:`HealthApp`), the metrics (:class:`Metrics`) and the protocol's values. They are
imported on first use, so ``import coordinator`` (and the ``coordinator`` command) stays
cheap. The public modules are ``coordinator.health``, ``coordinator.metrics``,
``coordinator.dashboard``, ``coordinator.client``, ``coordinator.guard`` (HTTP routes,
FastAPI) and ``coordinator.logs``; every other module is the package's own and may
change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coordinator._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "coordinator.exceptions",
    "ConnectionGate": "coordinator.gate.gate",
    "Coordinator": "coordinator.instance.coordinator",
    "CoordinatorError": "coordinator.exceptions",
    "Decision": "coordinator.gate.admission",
    "Event": "coordinator.contract.phases",
    "HealthApp": "coordinator.ops.health",
    "InvalidMessage": "coordinator.exceptions",
    "Keys": "coordinator.contract.keys",
    "Metrics": "coordinator.ops.metrics",
    "PhasePlan": "coordinator.contract.phases",
    "Reason": "coordinator.contract.rejection",
    "Settings": "coordinator.settings",
    "State": "coordinator.contract.phases",
    "decide": "coordinator.gate.admission",
}

__all__ = [
    "ConfigError",
    "ConnectionGate",
    "Coordinator",
    "CoordinatorError",
    "Decision",
    "Event",
    "HealthApp",
    "InvalidMessage",
    "Keys",
    "Metrics",
    "PhasePlan",
    "Reason",
    "Settings",
    "State",
    "__version__",
    "decide",
]

if TYPE_CHECKING:
    from coordinator.contract.keys import Keys
    from coordinator.contract.phases import Event, PhasePlan, State
    from coordinator.contract.rejection import Reason
    from coordinator.exceptions import ConfigError, CoordinatorError, InvalidMessage
    from coordinator.gate.admission import Decision, decide
    from coordinator.gate.gate import ConnectionGate
    from coordinator.instance.coordinator import Coordinator
    from coordinator.ops.health import HealthApp
    from coordinator.ops.metrics import Metrics
    from coordinator.settings import Settings


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
