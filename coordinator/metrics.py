"""Prometheus metrics (public path): see :mod:`coordinator.ops.metrics`."""

from coordinator.ops.metrics import CONTENT_TYPE, Metrics

__all__ = ["CONTENT_TYPE", "Metrics"]
