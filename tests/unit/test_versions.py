"""The releases CI's legs install (bin/test-versions) are the ends pyproject.toml
allows: requirements-floor.txt pins each package to its lower bound there (fastapi-cli:
the test group's, the `fastapi run` that fastapi 0.111 needs)."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

from tests.support import ROOT


def lower_bounds() -> dict[str, Version]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    lines = [*project["dependencies"],
             *(line for extra in project["optional-dependencies"].values() for line in extra),
             *(line for line in pyproject["dependency-groups"]["test"] if isinstance(line, str))]
    bounds: dict[str, Version] = {}
    for line in lines:
        req = Requirement(line)
        for spec in req.specifier:
            if spec.operator == ">=":  # the highest where extras say more than one
                bounds[req.name] = max(bounds.get(req.name, Version(spec.version)),
                                       Version(spec.version))
    return bounds


def floor_pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements-floor.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[req.name] = Version(spec.version)
    return pins


def test_the_floor_leg_pins_each_package_to_pyprojects_lower_bound() -> None:
    bounds = lower_bounds()
    pins = floor_pins()
    assert set(pins) == {"redis", "uvicorn", "starlette", "fastapi", "websockets", "fastapi-cli"}
    assert pins == {name: bounds[name] for name in pins}
