"""Hold WebSocket handshakes until the instance is ready, fleet-wide, through Redis."""

from .admission import Decision, decide
from .core import Coordinator
from .exceptions import ConfigError, CoordinatorError, InvalidMessage
from .keys import Keys
from .middleware import ConnectionGate
from .phases import Event, PhasePlan, State
from .settings import Settings

__all__ = [
    "ConfigError",
    "ConnectionGate",
    "Coordinator",
    "CoordinatorError",
    "Decision",
    "Event",
    "InvalidMessage",
    "Keys",
    "PhasePlan",
    "Settings",
    "State",
    "decide",
]
