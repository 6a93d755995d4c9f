"""The gate: the ASGI middleware that holds, admits and rejects handshakes.

:mod:`.admission` is the decision (a pure function) and every refusal's hint,
:mod:`.holds` the local hold queue, :mod:`.pacing` slow start and the fleet admission
rate, :mod:`.connections` the open connections (guarded, closed by a drain or at their
maximum age), :mod:`.rejection` how a refusal is written, :mod:`.lifespan` the app's
lifespan with the drain armed; :mod:`.gate` puts them together as
:class:`~coordinator.gate.gate.ConnectionGate` (dispatch, holding, counting).
"""
