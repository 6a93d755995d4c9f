"""deploy/cloudrun.yaml against the backend it deploys, without Google Cloud.

The probes must hit paths the backend serves on the port Cloud Run sends traffic to,
every variable must be one the backend reads (with values it accepts), the Redis URL
must come from Secret Manager, and the drain must fit in the 10 s between Cloud Run's
SIGTERM and its SIGKILL.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from backend.__main__ import GRACEFUL_SHUTDOWN
from backend.config import BackendConfig
from coordinator.instance.coordinator import STOP_DEADLINE
from coordinator.instance.drain import CLOSE_WAIT
from coordinator.settings import Settings
from tests.support import ROOT, backend_paths, doc_blocks, known_variables, route_paths

CLOUD_RUN_SIGKILL_AFTER = 10.0


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "deploy" / "cloudrun.yaml").read_text())


@pytest.fixture(scope="module")
def container(service) -> dict[str, Any]:
    containers = service["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_it_is_a_knative_service(service):
    assert service["apiVersion"] == "serving.knative.dev/v1"
    assert service["kind"] == "Service" and service["metadata"]["name"]


def test_websocket_settings(service):
    spec = service["spec"]["template"]["spec"]
    assert spec["timeoutSeconds"] == 3600  # a WebSocket lives up to Cloud Run's maximum
    assert 1 <= spec["containerConcurrency"] <= 1000
    annotations = service["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["autoscaling.knative.dev/minScale"]) >= 1
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"
    assert annotations["run.googleapis.com/sessionAffinity"] == "true"


def test_direct_vpc_egress_to_memorystore(service):
    annotations = service["spec"]["template"]["metadata"]["annotations"]
    interfaces = json.loads(annotations["run.googleapis.com/network-interfaces"])
    assert interfaces and all(i["network"] and i["subnetwork"] for i in interfaces)
    assert annotations["run.googleapis.com/vpc-access-egress"] in ("private-ranges-only",
                                                                  "all-traffic")


def test_probes_hit_paths_the_backend_serves_on_the_container_port(container):
    paths = backend_paths()
    port = container["ports"][0]["containerPort"]
    startup, liveness = container["startupProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert startup["path"] == "/health/startup" and startup["path"] in paths
    assert liveness["path"] == "/health/live" and liveness["path"] in paths
    assert startup["port"] == liveness["port"] == port


def test_the_startup_probe_waits_longer_than_the_phases_take(container):
    probe = container["startupProbe"]
    budget = probe.get("initialDelaySeconds", 0) + probe["periodSeconds"] * probe[
        "failureThreshold"]
    config = BackendConfig.from_env({**plain_env(container), "K_SERVICE": "ws-coordinator"})
    assert budget >= 2 * sum(config.durations.values())
    # A connection held from the start of `services` is released before its hold expires.
    assert config.durations["services"] <= Settings(cloud_run=True).max_queue_time


def test_every_variable_is_known_and_the_values_are_accepted(container):
    names = {e["name"] for e in container["env"]}
    assert names <= known_variables(), names - known_variables()
    assert "PORT" not in names  # Cloud Run sets it from containerPort
    env = {**plain_env(container), "K_SERVICE": "ws-coordinator",
           "PORT": str(container["ports"][0]["containerPort"]),
           "COORD_REDIS_URL": "rediss://default:secret@10.0.0.3:6378/0"}
    config = BackendConfig.from_env(env)
    # Cloud Run's K_SERVICE makes production and JSON logs the defaults.
    assert config.coord.environment == "production" and config.coord.log_format == "json"


def test_the_redis_url_comes_from_secret_manager(container):
    by_name = {e["name"]: e for e in container["env"]}
    ref = by_name["COORD_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] and ref["key"]
    assert "value" not in by_name["COORD_REDIS_URL"]
    assert "value" not in by_name.get("COORD_SIGNING_KEY", {})


def test_the_drain_fits_in_cloud_runs_grace(container):
    """The grace the service runs with (as the backend reads the spec), then the drain's
    two bounded steps as the code bounds them (the last 1012 closes, drain.CLOSE_WAIT; the
    whole of the coordinator's stop, STOP_DEADLINE),
    and uvicorn's own graceful shutdown as the launcher bounds it, fit between Cloud
    Run's SIGTERM and its SIGKILL. (The exit within the 10 s, measured:
    tests/e2e/test_servers.py.)"""
    config = BackendConfig.from_env({**plain_env(container), "K_SERVICE": "ws-coordinator"})
    assert (config.coord.drain_grace + CLOSE_WAIT + STOP_DEADLINE + GRACEFUL_SHUTDOWN
            <= CLOUD_RUN_SIGKILL_AFTER)


def test_the_public_service_serves_no_operator_route(container):
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["BACKEND_OPS_ROUTES"] == "off"
    config = BackendConfig.from_env({k: v for k, v in env.items() if v is not None})
    paths = route_paths(config)
    assert not paths & {"/fleet", "/metrics", "/dashboard"}


def test_connections_are_closed_before_cloud_runs_request_timeout_cuts_them(service, container):
    timeout = service["spec"]["template"]["spec"]["timeoutSeconds"]
    age = float(plain_env(container)["COORD_MAX_CONNECTION_AGE"])
    assert age < timeout  # each closes in (0.9 * age, age]: before the platform's cut
    assert Settings.from_env(plain_env(container)).max_connection_age == age


def test_the_deploy_doc_deploys_the_image_it_builds_under_a_tag_of_its_own(container):
    """docs/deploy.md's commands: the image it builds is the one the file names once its
    placeholders are replaced, and that tag is a new one per build, not `latest` (the same
    tag again leaves the spec unchanged: no new revision)."""
    (block,) = doc_blocks("docs/deploy.md", "Cloud Run")
    image = container["image"]
    assert image.endswith(":TAG")
    sed = re.search(r'sed -e "([^"]+)" deploy/cloudrun\.yaml', block)
    assert sed, block
    substitutions = dict(re.findall(r"s/(\w+)/(\$\w+)/g", sed[1]))
    assert {"PROJECT_ID", "REGION", "TAG"} <= set(substitutions)
    for placeholder, variable in substitutions.items():
        image = image.replace(placeholder, variable)
    (built,) = re.findall(r"gcloud builds submit --tag (\S+)", block)
    assert built == image
    (tag,) = re.findall(r"^TAG=(.+)$", block, re.M)
    assert "latest" not in tag and "$(" in tag  # computed for each build


def test_the_deploy_doc_enables_every_api_its_commands_call():
    (block,) = doc_blocks("docs/deploy.md", "Cloud Run")
    enable = block[block.index("gcloud services enable"):]
    enabled = set(re.findall(r"([a-z]+\.googleapis\.com)", enable[:enable.index("\n\n")]))
    apis = {"run": "run.googleapis.com", "redis": "redis.googleapis.com",
            "secrets": "secretmanager.googleapis.com",
            "artifacts": "artifactregistry.googleapis.com", "builds": "cloudbuild.googleapis.com"}
    used = set(re.findall(r"gcloud (\w+) ", block)) & set(apis)
    assert used == set(apis)  # the mapping covers what the block calls
    assert {apis[group] for group in used} <= enabled
