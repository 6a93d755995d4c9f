"""Prometheus metrics, read from the coordinator at scrape time.

Counters and gauges are collected from the coordinator's own counters when scraped, so
the gate's hot path does no extra work for them; only the hold-time histogram is fed by
the gate, once per held connection.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .core import Coordinator
from .middleware import ConnectionGate
from .phases import State

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _CoordinatorCollector(Collector):
    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord

    def collect(self) -> Iterator[Metric]:
        c = self.coord
        labels = ["instance"]
        state = GaugeMetricFamily("coordinator_state", "1 for the instance's current state",
                                  labels=["instance", "state"])
        for s in State:
            state.add_metric([c.id, s.value], 1.0 if c.state is s else 0.0)
        yield state
        held = GaugeMetricFamily("coordinator_held", "Handshakes held now", labels=labels)
        held.add_metric([c.id], len(c.queue))
        yield held
        cap = GaugeMetricFamily("coordinator_queue_max", "Local cap on held handshakes",
                                labels=labels)
        cap.add_metric([c.id], c.queue.max_size)
        yield cap
        oldest = GaugeMetricFamily("coordinator_oldest_hold_seconds",
                                   "Wait of the oldest held handshake", labels=labels)
        oldest.add_metric([c.id], c.queue.oldest_wait())
        yield oldest
        open_ = GaugeMetricFamily("coordinator_open_connections",
                                  "WebSocket connections handed to the app and still open",
                                  labels=labels)
        open_.add_metric([c.id], len(c.connections))
        yield open_
        admitted = CounterMetricFamily("coordinator_admitted", "Handshakes admitted",
                                       labels=["instance", "how"])
        for how in ("immediate", "after_hold"):
            admitted.add_metric([c.id, how], c.admitted.get(how, 0))
        yield admitted
        rejected = CounterMetricFamily("coordinator_rejected", "Handshakes rejected",
                                       labels=["instance", "reason"])
        for reason, count in sorted(c.rejected.items()):
            rejected.add_metric([c.id, reason], count)
        yield rejected
        phases = GaugeMetricFamily("coordinator_phase_duration_seconds",
                                   "Duration of each completed startup phase",
                                   labels=["instance", "phase"])
        for phase, seconds in c.phase_durations.items():
            phases.add_metric([c.id, phase], seconds)
        yield phases
        redis_up = GaugeMetricFamily("coordinator_redis_up", "1 while the Redis link is up",
                                     labels=labels)
        redis_up.add_metric([c.id], 1.0 if c.redis_ok else 0.0)
        yield redis_up
        errors = CounterMetricFamily("coordinator_redis_errors", "Redis operations that failed",
                                     labels=labels)
        errors.add_metric([c.id], c.redis_errors)
        yield errors
        drops = CounterMetricFamily("coordinator_dropped_messages",
                                    "Invalid pub/sub messages dropped",
                                    labels=["instance", "reason"])
        for reason, count in sorted(c.drops.counts.items()):
            drops.add_metric([c.id, reason], count)
        yield drops


class Metrics:
    """One registry per coordinator (tests run several in one process)."""

    def __init__(self, coord: Coordinator, gate: ConnectionGate | None = None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_CoordinatorCollector(coord))
        self.hold_seconds = Histogram(
            "coordinator_hold_seconds", "Time a handshake was held before its answer",
            ["outcome"], registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60))
        if gate is not None:
            gate.observers.append(self._observe)

    def _observe(self, what: str, reason: str | None, waited: float) -> None:
        if what in ("released", "gave_up") or (what == "rejected" and waited > 0):
            self.hold_seconds.labels(what if what != "rejected" else f"rejected_{reason}"
                                     ).observe(waited)

    def render(self) -> bytes:
        return generate_latest(self.registry)
