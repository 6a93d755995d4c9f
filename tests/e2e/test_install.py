"""The lean install, as a user gets it: the project's wheel in a fresh virtualenv with
redis-py alone. The gate, the coordinator, the health routes and the CLI import; the
optional parts say which extra they need; no top-level ``backend`` package arrives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.support import ROOT

pytestmark = pytest.mark.e2e

CORE_MODULES = ("coordinator", "coordinator.instance.coordinator", "coordinator.gate.gate",
                "coordinator.health", "coordinator.ops.cli", "coordinator.fleet.view")


def locked(name: str) -> str:
    for line in (ROOT / "requirements-dev.lock").read_text().splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.split()[0]
    raise AssertionError(f"{name} is not in requirements-dev.lock")


@pytest.fixture(scope="module")
def lean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("lean") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check"]
    subprocess.run([*pip, locked("redis")], check=True, timeout=300)
    subprocess.run([*pip, "--no-deps", str(ROOT)], check=True, timeout=300)
    return venv


def run(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # From a directory that is not the repository: nothing there can be imported by accident.
    return subprocess.run(args, cwd=venv, capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin"}, check=False)


def test_the_core_needs_redis_alone(lean: Path) -> None:
    python = str(lean / "bin" / "python")
    listed = run(lean, python, "-m", "pip", "list", "--format=freeze").stdout
    assert {Requirement(line).name.lower() for line in listed.split()} <= {"redis", "pip",
                                                                          "setuptools",
                                                                          "ws-coordinator"}
    imported = run(lean, python, "-c", "import " + ", ".join(CORE_MODULES))
    assert imported.returncode == 0, imported.stderr
    assert run(lean, str(lean / "bin" / "coordinator"), "--help").returncode == 0


def test_the_optional_parts_name_their_extra_and_the_backend_is_not_installed(lean: Path):
    dashboard = run(lean, str(lean / "bin" / "coordinator"), "dashboard")
    assert dashboard.returncode == 2
    assert "pip install 'ws-coordinator[dashboard]'" in dashboard.stderr
    backend = run(lean, str(lean / "bin" / "python"), "-c", "import backend")
    assert "No module named 'backend'" in backend.stderr
    typed = run(lean, str(lean / "bin" / "python"), "-c",
                "import coordinator, pathlib; "
                "print((pathlib.Path(coordinator.__file__).parent / 'py.typed').is_file())")
    assert typed.stdout.strip() == "True"


# The stacks users already pin redis-py in (issue 20): the library installs beside each,
# and pip resolves it to a redis-py inside their range, not a conflict or a downgrade of
# theirs. A dry run against the package index: nothing is installed.
BESIDE = {
    "arq==0.28.0": (">=5.0.2", "<6"),  # arq asks for redis[hiredis]<6
    "redis>=6.4,<7": (">=6.4", "<7"),
    "redis>=7.4,<8": (">=7.4", "<8"),
}


@pytest.mark.parametrize("theirs", list(BESIDE))
def test_it_installs_beside_the_redis_py_a_stack_already_pins(theirs: str,
                                                               tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
         "--disable-pip-version-check", "--report", str(report), str(ROOT), theirs],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    resolved = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    low, high = BESIDE[theirs]
    assert Version(resolved["redis"]) in SpecifierSet(f"{low},{high}"), resolved["redis"]
    assert "ws-coordinator" in resolved
