"""A readiness guard for HTTP routes: the gate holds WebSocket handshakes; an HTTP route
whose handler needs what the ready phase builds gets this instead.

    from fastapi import Depends
    from coordinator.guard import require_ready

    @app.get("/rooms", dependencies=[Depends(require_ready(coord))])
    async def rooms() -> list[str]: ...

Before the instance is ready (and once it drains or failed) the route answers HTTP 503
with an integer ``Retry-After`` and the rejection JSON (``{"reason": ..., "retry_after":
N}``), with the same hint a refused handshake gets (:func:`coordinator.gate.admission.
rejection`). A ready instance passes at once: one attribute read, no Redis call. It is
FastAPI's dependency and raises FastAPI's ``HTTPException``: it needs FastAPI.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException

from coordinator.contract.phases import State
from coordinator.contract.rejection import Reason
from coordinator.gate.admission import reason_for, rejection, spread
from coordinator.instance.coordinator import Coordinator


def require_ready(coord: Coordinator) -> Callable[[], None]:
    """A dependency (``Depends(require_ready(coord))``) that lets a request through only
    while ``coord``'s instance is ready."""

    def ready() -> None:
        state = coord.state
        if state is State.READY:
            return
        reason = Reason.STARTING if state is State.STARTING else reason_for(state)
        settings = coord.settings
        hint = rejection(reason, state=state, expected_ready_in=coord.expected_ready_in(),
                         wait_budget=settings.wait_budget(coord.current_phase),
                         max_retry_after=settings.max_retry_after).retry_after
        retry_after = spread(hint, settings.max_retry_after)
        raise HTTPException(503, detail={"reason": str(reason), "retry_after": retry_after},
                            headers={"Retry-After": str(retry_after)})

    return ready
