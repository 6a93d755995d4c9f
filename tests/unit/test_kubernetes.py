"""deploy/kubernetes.yaml, without a cluster: valid against Kubernetes' own schemas
(kubernetes-validate, strict), and right for the backend it runs: probes on paths the
backend serves on the port it listens on, variables it reads with values it accepts, the
Redis URL and the drain token from Secrets, no operator routes on the Service, and a
preStop hook that drains through the drain endpoint, inside
terminationGracePeriodSeconds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from backend.__main__ import GRACEFUL_SHUTDOWN
from backend.config import BackendConfig
from coordinator.ops.arguments import build_parser
from tests.support import ROOT, backend_paths, doc_blocks, known_variables

MANIFEST = ROOT / "deploy" / "kubernetes.yaml"
# After the grace the instance closes what is still open and leaves the fleet: allow this.
CLOSE_AND_LEAVE = 3.0


@pytest.fixture(scope="module")
def documents() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


@pytest.fixture(scope="module")
def pod(documents) -> dict[str, Any]:
    return documents["Deployment"]["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod) -> dict[str, Any]:
    (only,) = pod["containers"]
    return only


def test_it_validates_against_the_kubernetes_schemas_strictly(tmp_path: Path):
    validator = Path(sys.executable).parent / "kubernetes-validate"
    done = subprocess.run([str(validator), "--strict", str(MANIFEST)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yaml"  # and it is a real check: a misspelt field fails
    broken.write_text(MANIFEST.read_text().replace("failureThreshold: 60",
                                                   "failureTreshold: 60"))
    failed = subprocess.run([str(validator), "--strict", str(broken)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert failed.returncode != 0


def env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment, with the Secret and the pod's name filled in."""
    out = {}
    for item in container["env"]:
        if "value" in item:
            out[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            out[item["name"]] = {"COORD_REDIS_URL": "redis://:secret@redis:6379/0",
                                 "COORD_DRAIN_TOKEN": "9c1f" * 12}[item["name"]]
        else:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            out[item["name"]] = "ws-coordinator-5d8f7c9b4-x2x7q"
    return out


def test_every_variable_is_one_the_backend_reads_with_a_value_it_accepts(container):
    variables = env(container)
    assert set(variables) <= known_variables()
    config = BackendConfig.from_env(variables)
    assert not config.ops_routes  # the Service is public: no /fleet, /metrics, /dashboard/
    redis_url = next(e for e in container["env"] if e["name"] == "COORD_REDIS_URL")
    assert redis_url["valueFrom"]["secretKeyRef"] == {"name": "coord-redis", "key": "url"}


def test_probes_hit_served_paths_on_the_port_the_backend_listens_on(container):
    port = container["ports"][0]
    assert port["containerPort"] == BackendConfig.from_env(env(container)).port
    paths = backend_paths()
    probes = {kind: container[kind]["httpGet"] for kind in
              ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["startupProbe"]["path"] == "/health/startup"
    assert probes["readinessProbe"]["path"] == "/health/ready"
    assert probes["livenessProbe"]["path"] == "/health/live"
    for probe in probes.values():
        assert probe["path"] in paths and probe["port"] == port["name"]
    # A drain must take the pod out of the endpoints at once: one failed check.
    assert container["readinessProbe"]["failureThreshold"] == 1


def test_prestop_drains_through_the_endpoint_within_the_termination_grace(pod, container):
    """The hook is `coordinator drain` against the drain endpoint the backend serves, on
    its port, with the token it reads from a Secret (the endpoint is off without one);
    the drain, then SIGTERM's shutdown (uvicorn's, bounded by GRACEFUL_SHUTDOWN), fit
    before the kubelet's SIGKILL."""
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["coordinator", "drain"]
    url = build_parser().parse_args(command[1:]).url
    config = BackendConfig.from_env(env(container))
    assert url == f"http://127.0.0.1:{config.port}/drain" and "/drain" in backend_paths()
    assert config.coord.drain_token  # on
    token = next(e for e in container["env"] if e["name"] == "COORD_DRAIN_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "coord-drain", "key": "token",
                                                  "optional": True}  # pods start without it
    drain = config.coord.drain_grace + CLOSE_AND_LEAVE
    assert drain + GRACEFUL_SHUTDOWN <= pod["terminationGracePeriodSeconds"]


def test_the_service_selects_the_pods_and_a_rolling_update_keeps_capacity(documents):
    deployment, service = documents["Deployment"], documents["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert documents["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() \
        <= labels.items()


def test_the_deploy_doc_builds_and_pushes_the_image_it_deploys(container):
    block = doc_blocks("docs/deploy.md", "Kubernetes")[0]  # the deploy (then: the dashboard)
    assert container["image"] == "IMAGE"  # the placeholder docs/deploy.md's sed replaces
    (image,) = re.findall(r"^IMAGE=(.+)$", block, re.M)
    assert "$(" in image  # a tag of its own per build
    assert "docker build -t $IMAGE ." in block and "docker push $IMAGE" in block
    assert 'sed "s|IMAGE|$IMAGE|" deploy/kubernetes.yaml | kubectl apply -f -' in block
    assert block.index("docker push") < block.index("kubectl apply")
