"""The health routes (public path): see :mod:`coordinator.ops.health`."""

from coordinator.ops.health import PATHS, HealthApp, health_document

__all__ = ["PATHS", "HealthApp", "health_document"]
