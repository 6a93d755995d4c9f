"""``Metrics(coord)`` with no gate at hand (``add_middleware`` builds the gate at the app's
first call) still feeds the hold-time histogram: it stayed empty after a real hold."""

from __future__ import annotations

import asyncio

from coordinator.gate.gate import ConnectionGate
from coordinator.instance.coordinator import Coordinator
from coordinator.ops.metrics import Metrics
from coordinator.settings import DEFAULT_PHASES, Settings
from tests.support import (
    App,
    FakeWebSocket,
    NoRedis,
    async_wait_until,
    handshake,
    metric,
    parse_metrics,
    run_phases,
)


async def test_metrics_made_before_the_gate_count_its_holds() -> None:
    coord = Coordinator(Settings(instance_id="m-1", environment="test"),
                        client=NoRedis())  # type: ignore[arg-type]
    metrics = Metrics(coord)  # before any gate exists, as an app's setup does
    # Given to the gate as well, as apps did before: still one observation per hold.
    gate = ConnectionGate(App(), coord, observers=[metrics.observe])
    ready = DEFAULT_PHASES.index("services")
    await run_phases(coord, *DEFAULT_PHASES[:ready])
    client = FakeWebSocket()
    task = handshake(gate, client)
    await async_wait_until(lambda: len(gate.state.queue) == 1, 5, what="held in cache")
    await run_phases(coord, "services")
    await asyncio.wait_for(task, 5)
    samples = parse_metrics(metrics.render())
    assert metric(samples, "coordinator_hold_seconds_count", outcome="released") == 1


async def test_every_series_names_the_instance_as_instance_id_and_a_registry_can_be_given(
        ) -> None:
    """"instance" is the scrape target's label in Prometheus (a target's own is renamed
    exported_instance), and the histogram had none; the registry was private."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.parser import text_string_to_metric_families

    coord = Coordinator(Settings(instance_id="m-2", environment="test"),
                        client=NoRedis())  # type: ignore[arg-type]
    theirs = CollectorRegistry()
    metrics = Metrics(coord, registry=theirs)
    gate = ConnectionGate(App(), coord)
    await run_phases(coord, *DEFAULT_PHASES[:DEFAULT_PHASES.index("services")])
    task = handshake(gate, FakeWebSocket())
    await async_wait_until(lambda: len(gate.state.queue) == 1, 5, what="held")
    await run_phases(coord, "services")
    await asyncio.wait_for(task, 5)
    page = metrics.render().decode()
    samples = [s for f in text_string_to_metric_families(page) for s in f.samples]
    assert {s.name for s in samples} >= {"coordinator_hold_seconds_count", "coordinator_held"}
    assert all(s.labels.get("instance_id") == "m-2" and "instance" not in s.labels
               for s in samples)
    assert theirs.get_sample_value("coordinator_held", {"instance_id": "m-2"}) == 0
