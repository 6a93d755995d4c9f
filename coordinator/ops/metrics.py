"""Prometheus metrics, read from the coordinator at scrape time.

Counters and gauges are collected from the coordinator's own counters when scraped, so
the gate's hot path does no extra work for them; only the hold-time histogram is fed by
the gate, once per held connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from coordinator.contract.outcomes import Seen
from coordinator.contract.phases import State
from coordinator.contract.record import CapMode
from coordinator.contract.rejection import Reason
from coordinator.gate.gate import ConnectionGate, GateFigures, gate_of
from coordinator.instance.coordinator import Coordinator
from coordinator.instance.drain import DRAINS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The coordinator's instance id on every series. Not "instance": Prometheus sets that
# label to the scrape target, and renames a target's own to "exported_instance".
LABEL = "instance_id"


Family = GaugeMetricFamily | CounterMetricFamily


def _family(kind: type[Family], name: str, doc: str, instance: str,
            values: Mapping[Any, float] | float, label: str | None = None) -> Family:
    """One metric family: a single value, or one value per ``label`` value (keys may be
    StrEnum members: a label value is their text)."""
    if isinstance(values, int | float):
        family = kind(name, doc, labels=[LABEL])
        family.add_metric([instance], float(values))
        return family
    assert label is not None
    family = kind(name, doc, labels=[LABEL, label])
    for key, value in sorted((str(k), v) for k, v in values.items()):
        family.add_metric([instance, key], float(value))
    return family


def _one_hot(choices: Iterable[str], chosen: str) -> dict[str, float]:
    return {choice: 1.0 if choice == chosen else 0.0 for choice in choices}


class _CoordinatorCollector(Collector):
    def __init__(self, coord: Coordinator, gate: ConnectionGate | None) -> None:
        self.coord = coord
        self._gate_given = gate

    @property
    def gate(self) -> ConnectionGate | None:
        return self._gate_given or gate_of(self.coord)

    def collect(self) -> Iterator[Metric]:
        c, gauge, counter = self.coord, GaugeMetricFamily, CounterMetricFamily
        gate = self.gate
        figures = gate.figures() if gate is not None else None
        yield _family(gauge, "coordinator_state", "1 for the instance's current state", c.id,
                      _one_hot(State, c.state), "state")
        if figures is not None:
            yield from self._gate(figures)
        yield _family(gauge, "coordinator_phase_duration_seconds",
                      "Duration of each completed startup phase", c.id, c.phase_durations,
                      "phase")
        expected = c.expected_ready_in()
        if expected is not None and not c.is_ready:
            yield _family(gauge, "coordinator_expected_ready_seconds",
                          "Seconds until ready, estimated from N:phase_stats", c.id, expected)
        yield _family(gauge, "coordinator_redis_up", "1 while the Redis link is up", c.id,
                      1.0 if c.redis_ok else 0.0)
        yield _family(gauge, "coordinator_drain_armed",
                      "1 while SIGTERM drains this instance in this process (0: the server's "
                      "own shutdown would answer held handshakes)", c.id,
                      1.0 if DRAINS.armed(c) is not None else 0.0)
        f = figures
        yield _family(counter, "coordinator_redis_errors", "Redis operations that failed",
                      c.id, {"link": c.redis_errors, "leases": f.lease_errors if f else 0,
                             "leases_noperm": f.lease_denied if f else 0,
                             "admit": f.admit_errors if f else 0}, "source")
        yield _family(counter, "coordinator_dropped_messages",
                      "Invalid pub/sub messages (and instance hashes) dropped", c.id,
                      dict(c.drops.counts), "reason")

    def _gate(self, f: GateFigures) -> Iterator[Metric]:
        c, gauge, counter = self.coord, GaugeMetricFamily, CounterMetricFamily
        yield _family(gauge, "coordinator_held", "Handshakes held now", c.id, f.held)
        yield _family(gauge, "coordinator_queue_max", "Local cap on held handshakes", c.id,
                      f.queue_max)
        yield _family(gauge, "coordinator_oldest_hold_seconds",
                      "Wait of the oldest held handshake", c.id, f.oldest_wait)
        yield _family(gauge, "coordinator_open_connections",
                      "WebSocket connections handed to the app and still open", c.id,
                      f.connections)
        yield _family(counter, "coordinator_admitted", "Handshakes admitted", c.id,
                      f.admitted, "how")
        yield _family(counter, "coordinator_rejected", "Handshakes rejected", c.id,
                      f.rejected, "reason")
        yield _family(gauge, "coordinator_fleet_leases_held",
                      "Fleet leases (N:leases) this instance holds now", c.id, f.leases_held)
        yield _family(counter, "coordinator_fleet_lease_requests",
                      "Lease requests by outcome: leased, refused (fleet cap reached), local "
                      "(Redis unavailable: the local cap alone decided)", c.id,
                      f.lease_outcomes, "outcome")
        yield _family(gauge, "coordinator_fleet_cap_mode",
                      "1 for how the fleet cap is enforced now: fleet, local or off", c.id,
                      _one_hot(CapMode, f.cap_mode), "mode")
        if f.fleet_cap is not None:
            yield _family(gauge, "coordinator_fleet_cap",
                          "Fleet-wide cap on held handshakes (COORD_FLEET_MAX_QUEUE)", c.id,
                          f.fleet_cap)
        yield _family(counter, "coordinator_paced",
                      "Handshakes held for a token of slow start or the fleet admission "
                      "rate, then admitted", c.id, f.paced)


class Metrics:
    """The coordinator's (and its gate's) Prometheus metrics: ``render()`` is the body of
    ``/metrics``. They go into ``registry`` when given (``prometheus_client.REGISTRY``,
    to serve them beside the app's own), else into a registry of their own (tests run
    several in one process). Every series is labelled ``instance_id``.

    The gate's figures come from ``gate``, else from the gate attached to ``coord``. The
    hold-time histogram is fed by :meth:`observe`, registered on ``gate`` when given,
    else on every gate of ``coord``, however and whenever it is attached
    (``app.add_middleware(ConnectionGate, coordinator=coord)`` builds it at the first
    request): ``Metrics(coord)`` is all it takes.
    """

    def __init__(self, coord: Coordinator, gate: ConnectionGate | None = None, *,
                 registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self.coord = coord
        self.registry.register(_CoordinatorCollector(coord, gate))
        self.hold_seconds = Histogram(
            "coordinator_hold_seconds", "Time a handshake was held before its answer",
            [LABEL, "outcome"], registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60))
        if gate is not None:
            gate.observe(self.observe)
        else:
            coord.observe_gates(self.observe)

    def observe(self, what: Seen, reason: Reason | None, waited: float) -> None:
        if what in (Seen.RELEASED, Seen.GAVE_UP) or (what is Seen.REJECTED and waited > 0):
            outcome = what if what is not Seen.REJECTED else f"rejected_{reason}"
            self.hold_seconds.labels(self.coord.id, outcome).observe(waited)

    def render(self) -> bytes:
        return generate_latest(self.registry)
