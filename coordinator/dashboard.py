"""The live fleet dashboard (public path): see :mod:`coordinator.ops.dashboard`."""

from coordinator.ops.dashboard import (
    FleetFeed,
    create_app,
    dashboard_app,
    mount_dashboard,
    serve,
    sse_frame,
)

__all__ = ["FleetFeed", "create_app", "dashboard_app", "mount_dashboard", "serve", "sse_frame"]
