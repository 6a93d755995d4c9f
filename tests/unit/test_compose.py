"""docker-compose.yml, Dockerfile and .dockerignore, checked without a Docker engine.

The compose file must describe the fleet the process-based runs start: the same command
(``python -m backend``), the same variable names as bin/demo's instances, values the
backend accepts, health checks on paths the backend serves, and a HAProxy given every
variable deploy/haproxy.cfg reads. The image installs its dependencies from
requirements.lock, which must pin everything pyproject.toml's core and ``backend`` extra
ask for (bin/lock rewrites it), and runs the backend from its working directory.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tomllib
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from backend.config import BackendConfig
from demo.processes import BACKEND_COMMAND, backend_env
from tests.support import ROOT, backend_paths, known_variables, route_paths

BACKENDS = ("backend-1", "backend-2", "backend-3")


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the image's last stage, the one that runs."""
    instructions = dockerfile()
    start = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[start + 1:]


def pip_installs() -> list[list[str]]:
    """The arguments after ``pip install`` of every such command the Dockerfile runs."""
    out = []
    for word, args in dockerfile():
        if word == "RUN":
            for command in args.split("&&"):
                argv = shlex.split(command)
                for i in range(len(argv) - 1):
                    if argv[i].endswith("pip") and argv[i + 1] == "install":
                        out.append(argv[i + 2:])
    return out


def dockerignored(path: str) -> bool:
    """Whether Docker leaves ``path`` (relative to the root) out of the build context.

    As Docker reads .dockerignore: a pattern matches a path or any folder above it, a
    ``!`` pattern takes back what the patterns before it left out, the last match wins.
    """
    ignored = False
    parts = path.split("/")
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated, pattern = line.startswith("!"), line.lstrip("!")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            ignored = not negated
    return ignored


def lock_pins(name: str) -> dict[str, Requirement]:
    """A lock file's requirements by canonical name."""
    pins: dict[str, Requirement] = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pins[canonicalize_name(req.name)] = req
    return pins


def project_requirements(*extras: str) -> list[Requirement]:
    """pyproject.toml's core requirements and those of ``extras``, the project's own
    extras that they name (``ws-coordinator[metrics]``) followed."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    own = canonicalize_name(project["name"])
    out, seen, todo = [], set(), [None, *extras]
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        lines = (project["dependencies"] if extra is None
                 else project["optional-dependencies"][extra])
        for req in map(Requirement, lines):
            if canonicalize_name(req.name) == own:
                todo.extend(req.extras)
            else:
                out.append(req)
    return out


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_the_services_and_their_start_order(compose):
    services = compose["services"]
    assert set(services) == {"redis", *BACKENDS, "haproxy"}
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    for name in BACKENDS:
        assert services[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert services["haproxy"]["depends_on"] == {
        name: {"condition": "service_started"} for name in BACKENDS}


def test_backends_run_the_image_command_the_tests_run(compose):
    instructions = dockerfile()
    cmd = [args for word, args in instructions if word == "CMD"][-1]
    assert yaml.safe_load(cmd) == ["python", *BACKEND_COMMAND]
    for name in BACKENDS:
        service = compose["services"][name]
        assert "command" not in service and "entrypoint" not in service
        assert (ROOT / service["build"] / "Dockerfile").is_file()


def test_backends_set_the_variables_the_demo_sets_with_valid_values(compose):
    demo_names = set(backend_env(1, redis_url="redis://r:6379/0", namespace="n", port=1,
                                 services=1, gate=True))
    known = known_variables()
    ids = set()
    for name in BACKENDS:
        env = compose["services"][name]["environment"]
        assert set(env) == demo_names, set(env) ^ demo_names
        assert set(env) <= known, set(env) - known
        config = BackendConfig.from_env(env)  # every value is one the backend accepts
        assert config.coord.gate and config.coord.log_format == "text"
        ids.add(config.coord.instance_id)
    assert ids == set(BACKENDS)  # distinct instance ids
    durations = {BackendConfig.from_env(compose["services"][n]["environment"]).durations[
        "services"] for n in BACKENDS}
    assert len(durations) == 3 and all(3 <= d <= 8 for d in durations)


def test_backend_health_checks_use_a_served_path_on_the_served_port(compose):
    paths = backend_paths()
    for name in BACKENDS:
        service = compose["services"][name]
        check = " ".join(service["healthcheck"]["test"])
        url = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]+)", check)
        assert url, check
        assert url.group(1) == service["environment"]["PORT"]
        assert url.group(2) == "/health/ready" and url.group(2) in paths
        # Docker's SIGKILL comes no sooner than Cloud Run's: the drain fits.
        assert service["stop_grace_period"] == "10s"
        assert float(service["environment"]["COORD_DRAIN_GRACE"]) < 10


def test_haproxy_gets_every_variable_its_config_reads(compose):
    haproxy = compose["services"]["haproxy"]
    source, target, mode = haproxy["volumes"][0].split(":")
    assert (ROOT / source).resolve() == ROOT / "deploy" / "haproxy.cfg"
    assert target == "/usr/local/etc/haproxy/haproxy.cfg" and mode == "ro"
    config = (ROOT / "deploy" / "haproxy.cfg").read_text()
    read = set(re.findall(r"\$\{([A-Z0-9_]+)", config))
    required = set(re.findall(r"\$\{([A-Z0-9_]+)\}", config))
    env = haproxy["environment"]
    assert required <= set(env) <= read
    for i, name in enumerate(BACKENDS, start=1):
        port = compose["services"][name]["environment"]["PORT"]
        assert env[f"BACKEND_{i}"] == f"{name}:{port}"
    published = haproxy["ports"][0].split(":")[-1]
    assert env["HAPROXY_BIND"] == f":{published}"


def test_haproxy_accepts_the_config_with_the_compose_environment(compose, tmp_path):
    env = dict(compose["services"]["haproxy"]["environment"])
    env["HAPROXY_STATS_SOCKET"] = str(tmp_path / "haproxy.sock")
    result = subprocess.run(["haproxy", "-c", "-f", str(ROOT / "deploy" / "haproxy.cfg")],
                            env={**os.environ, **env}, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_the_image_is_slim_non_root_and_honours_port():
    instructions = dockerfile()
    bases = [args for word, args in instructions if word == "FROM"]
    assert bases and all(b.split()[0].endswith("-slim") for b in bases)
    users = [args for word, args in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    env = " ".join(args for word, args in instructions if word == "ENV")
    port = re.search(r"\bPORT=(\d+)", env)
    assert port and [args for word, args in instructions if word == "EXPOSE"] == [port.group(1)]
    assert "PORT" in known_variables() and "HOST" in known_variables()
    for word, args in instructions:
        if word == "COPY" and "--from" not in args:
            for source in shlex.split(args)[:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"


def test_dockerignore_keeps_the_build_context_small():
    copied = {source.rstrip("/") for word, args in dockerfile()
              if word == "COPY" and "--from" not in args for source in shlex.split(args)[:-1]}
    for source in copied:  # nothing the image needs is left out of the context
        assert not dockerignored(source), source
        for path in (ROOT / source).rglob("*") if (ROOT / source).is_dir() else ():
            if "__pycache__" not in path.parts:
                assert not dockerignored(str(path.relative_to(ROOT))), path
    # and nothing else goes in: not the repository's history, the virtualenv, the tests,
    # the development lock, nor bytecode
    context = {entry.name for entry in ROOT.iterdir() if not dockerignored(entry.name)}
    assert context == copied, context ^ copied
    for left_out in (".git", ".venv", "tests", "bench", "demo", "requirements-dev.lock",
                     "coordinator/__pycache__/core.cpython-311.pyc"):
        assert dockerignored(left_out), left_out


def test_the_image_installs_from_the_lock():
    installs = pip_installs()
    assert installs, "the Dockerfile installs nothing"
    # every dependency comes from the lock; the project itself adds none of its own
    for args in installs:
        assert args[-2:] == ["-r", "requirements.lock"] or "--no-deps" in args, args
    locked = [i for i, args in enumerate(installs) if "requirements.lock" in args]
    project = [i for i, args in enumerate(installs) if "--no-deps" in args and "." in args]
    assert locked and project and locked[0] < project[0]
    copies = [shlex.split(args) for word, args in dockerfile() if word == "COPY"]
    assert ["requirements.lock", "./"] in copies


def test_the_lock_pins_what_the_image_and_the_tests_need():
    image, dev = lock_pins("requirements.lock"), lock_pins("requirements-dev.lock")
    for pins in (image, dev):
        for req in pins.values():  # exact pins only
            assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", req
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]
    tools = [Requirement(line) for group in groups.values() for line in group]
    for lock, needed in ((image, project_requirements("backend")),
                         (dev, project_requirements(*project["optional-dependencies"]) + tools)):
        for req in needed:
            pinned = lock.get(canonicalize_name(req.name))
            assert pinned, f"{req} is not in the lock: run bin/lock"
            version = next(iter(pinned.specifier)).version
            assert req.specifier.contains(version, prereleases=True), \
                f"{req} against the locked {version}: run bin/lock"
    # the image runs the versions the tests ran
    assert {name: str(req.specifier) for name, req in image.items()} == {
        name: str(dev[name].specifier) for name in image}


def test_the_image_runs_the_backend_from_its_working_directory():
    stage = final_stage()
    workdir = [args for word, args in stage if word == "WORKDIR"][-1]
    copies = [shlex.split(args) for word, args in stage if word == "COPY"]
    sources = {source.rstrip("/"): argv[-1] for argv in copies if "--from" not in argv[0]
               for source in argv[:-1]}
    target = sources["backend"]
    assert os.path.normpath(os.path.join(workdir, target)) == os.path.join(workdir, "backend")
    assert (ROOT / "backend" / "__main__.py").is_file()
    # backend/ is not part of the wheel: the image's only copy is the one it runs
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]
    assert find["include"] == ["coordinator", "coordinator.*"]


def test_known_variables_are_what_the_backend_reads():
    names = known_variables()
    assert {"COORD_REDIS_URL", "COORD_INSTANCE_ID", "BACKEND_PHASE_DURATIONS", "PORT",
            "K_SERVICE"} <= names
    assert not names - {"HOST", "PORT", "K_SERVICE"} - {
        n for n in names if n.startswith(("COORD_", "BACKEND_"))}


def test_the_dockerfile_builds_without_buildkit():
    # Cloud Build's `gcloud builds submit --tag` runs the classic builder, which rejects
    # BuildKit-only syntax such as RUN --mount or heredocs.
    for word, rest in dockerfile():
        assert not rest.startswith("--mount") and "<<" not in rest, (word, rest)
    assert ("COPY", "--from=build /opt/venv /opt/venv") in dockerfile()


OPS_ROUTES = ("/fleet", "/metrics", "/dashboard", "/drain")  # /drain: a token's, for preStop


def test_only_haproxy_is_published_and_its_frontend_denies_the_operator_routes(compose):
    """The operator routes have no authentication: compose's public entry point is
    HAProxy's port, whose frontend turns them away (tests/e2e/test_operator_routes.py
    shows it with a real haproxy)."""
    published = {name for name, service in compose["services"].items() if service.get("ports")}
    assert published == {"haproxy"}
    config = (ROOT / "deploy" / "haproxy.cfg").read_text()
    frontend = config.split("frontend websocket", 1)[1].split("\nbackend ", 1)[0]
    deny = [line.strip() for line in frontend.splitlines()
            if line.strip().startswith("http-request deny")]
    assert len(deny) == 1 and "path,url_dec -m beg -i" in deny[0]
    assert all(route in deny[0] for route in OPS_ROUTES)
    routes = route_paths(BackendConfig.from_env({}))
    assert set(OPS_ROUTES) <= routes  # what it must cover exists


def test_backends_reach_the_host_as_host_docker_internal_on_linux_too(compose):
    """docs/deploy.md: a Redis outside compose at host.docker.internal; Docker Engine on Linux
    defines the name only through extra_hosts' host-gateway."""
    for name in BACKENDS:
        assert "host.docker.internal:host-gateway" in compose["services"][name]["extra_hosts"]
