"""The health routes every gated service needs, as one small ASGI app.

    app.mount("/health", HealthApp(coord, gate))      # FastAPI or Starlette

serves what load balancers and platforms probe:

- ``/health/live``: 200 while the process runs; 503 once a phase failed (and from then
  on, draining or not), so the platform replaces an instance that can never serve (Cloud
  Run and Kubernetes liveness probes);
- ``/health/startup``: 200 once the ready phase has completed (the Cloud Run startup
  probe, a Kubernetes startupProbe), else 503;
- ``/health/ready``: 200 while ready and not draining, else 503 (HAProxy's check, a
  Kubernetes readinessProbe): a starting or draining instance gets no new connections.

Each answers JSON: the instance, its state and phase, the Redis link, and (with a gate)
the hold queue, the fleet cap and the gate's counters. No Redis call: it is all in
memory, so a probe answers even while Redis is down.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

from coordinator.contract.documents import CapStatus, DrainStatus, HealthDocument
from coordinator.contract.record import Link
from coordinator.gate.gate import ConnectionGate, gate_of
from coordinator.instance.coordinator import Coordinator
from coordinator.instance.drain import DRAINS

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
PATHS = ("/health/live", "/health/startup", "/health/ready")


def health_document(coord: Coordinator, gate: ConnectionGate | None = None) -> HealthDocument:
    """What every health route answers: the instance as this process sees it now."""
    gate = gate if gate is not None else gate_of(coord)
    drain_via = DRAINS.armed(coord)
    doc = HealthDocument(
        instance=coord.id,
        state=coord.state.value,
        phase=coord.current_phase,
        phase_index=coord.status.phase_index,
        phases_total=coord.plan.total,
        redis=Link.OK if coord.redis_ok else Link.DOWN,
        dropped_messages=dict(coord.drops.counts),
        drain=DrainStatus(armed=drain_via is not None, via=drain_via),
    )
    if gate is not None:
        figures = gate.figures()
        cap = CapStatus(cap=figures.fleet_cap, mode=figures.cap_mode.value,
                        held_leases=figures.leases_held)
        if figures.lease_denial:
            cap["refused"] = figures.lease_denial
        doc["queue"] = figures.queue
        doc["fleet_cap"] = cap
        doc["admitted"] = {str(how): n for how, n in figures.admitted.items() if n}
        doc["rejected"] = {str(reason): n for reason, n in figures.rejected.items()}
    return doc


class HealthApp:
    """``/health/live``, ``/health/startup`` and ``/health/ready`` for ``coord`` (and its
    gate: ``gate``, else the one attached to ``coord``).

    Mount it at ``/health`` (``app.mount("/health", HealthApp(coord, gate))``). It answers
    a path by its last segment (``live``, ``startup``, ``ready``), whatever the mount
    leaves in ``path``. Anything else is 404; a method other than GET or HEAD 405.
    """

    def __init__(self, coord: Coordinator, gate: ConnectionGate | None = None) -> None:
        self.coord = coord
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # a mounted app sees only http
        route = scope["path"].rstrip("/").rpartition("/")[2]
        if route not in ("live", "startup", "ready"):
            await respond(send, 404, {"error": "not found"}, scope)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await respond(send, 405, {"error": "method not allowed"}, scope)
            return
        coord = self.coord
        if route == "live":
            failed = coord.failure is not None  # for good: a drain does not undo it
            await respond(send, 503 if failed else 200,
                           {"status": "failed" if failed else "live", "instance": coord.id},
                           scope)
            return
        ok = coord.ready_at is not None if route == "startup" else coord.is_ready
        await respond(send, 200 if ok else 503, health_document(coord, self.gate), scope)


async def respond(send: Send, status: int, body: Mapping[str, Any], scope: Scope,
                  headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Answer ``body`` as JSON, uncached (the operator routes' one way to answer)."""
    data = json.dumps(body, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()),
                            (b"cache-control", b"no-store"), *headers]})
    await send({"type": "http.response.body",
                "body": b"" if scope["method"] == "HEAD" else data})
