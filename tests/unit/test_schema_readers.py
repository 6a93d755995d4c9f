"""The readers that are not Python read the one schema too: every field the dashboard's
script takes from a fleet document, an instance or an event exists in the contract's
types (coordinator/contract/), and its states are the contract's states."""

from __future__ import annotations

import re

from coordinator.contract.documents import FleetDocument, FleetTotals, InstanceView
from coordinator.contract.events import MESSAGE_FIELDS
from coordinator.contract.phases import State
from tests.support import ROOT

SCRIPT = (ROOT / "coordinator/ops/dashboard/static/dashboard.js").read_text()
CLIENT_SIDE = {"receivedAt", "phaseReceivedAt"}  # the script's own bookkeeping


def fields_read(variable: str) -> set[str]:
    found = set(re.findall(rf"\b{variable}\.([A-Za-z_]+)\b", SCRIPT))
    found |= set(re.findall(rf"aged\({variable}, '([a-z_]+)'", SCRIPT))
    return found - CLIENT_SIDE


def test_every_instance_field_the_dashboard_reads_is_in_the_fleet_documents_instances() -> None:
    read = fields_read("record")
    assert {"state", "phase", "queue_depth", "heartbeat_age"} <= read  # the parse finds them
    assert read <= set(InstanceView.__annotations__)


def test_every_document_totals_and_event_field_the_dashboard_reads_exists() -> None:
    assert fields_read("doc") <= set(FleetDocument.__annotations__)
    assert fields_read("totals") <= set(FleetTotals.__annotations__)
    assert {"event", "phase"} <= fields_read("message") <= set(MESSAGE_FIELDS)


def test_the_dashboards_states_are_the_contracts() -> None:
    (states,) = re.findall(r"const STATES = \[([^\]]*)\]", SCRIPT)
    assert re.findall(r"'([a-z]+)'", states) == [s.value for s in State]
