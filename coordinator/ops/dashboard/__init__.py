"""A live fleet dashboard: one page of plain HTML, CSS and JavaScript, fed by Server-Sent
Events from ``N:events`` and periodic fleet snapshots. Served at ``/dashboard`` by an
instance (``mount_dashboard``) or on its own (``serve``, ``coordinator dashboard``)."""

from coordinator.ops.dashboard.feed import FleetFeed, sse_frame
from coordinator.ops.dashboard.web import create_app, dashboard_app, mount_dashboard, serve

__all__ = ["FleetFeed", "create_app", "dashboard_app", "mount_dashboard", "serve", "sse_frame"]
