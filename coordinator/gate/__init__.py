"""The gate: the ASGI middleware that holds, admits and rejects handshakes.

:mod:`.admission` is the decision (a pure function), :mod:`.holds` the local hold
queue, :mod:`.pacing` slow start and the fleet admission rate, :mod:`.connections` the
open connections, :mod:`.rejection` how a refusal is written; :mod:`.gate` puts them
together as :class:`~coordinator.gate.gate.ConnectionGate`.
"""
