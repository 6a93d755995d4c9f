from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from coordinator._redis.client import make_redis
from harness.topologies import NAMES, Cluster, SentinelSet, Topology
from harness.topologies import start as start_topology
from tests.support import ACL_PASSWORD, AclRedis, BackendProcess, CliProcess, RedisServer, free_port

# A run started in the background by a non-interactive shell (`bin/test &`, `nohup`)
# inherits SIGINT ignored, and so would every program the tests start and then stop with
# Ctrl-C (`coordinator events`, `fleet --watch`, `bin/demo`): Python installs no
# KeyboardInterrupt handler where SIGINT is ignored at start. Its children get the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# The conformance matrix: every test that uses the session's Redis (``redis_server``,
# and what is made from it: ``client``, ``redis_text``, ``attacker``) under tests/
# integration/, and every test marked ``matrix``, runs once per Redis deployment users
# run (harness/topologies.py), each started once for the session. Every other test that
# uses it runs on Redis alone. ``--redis`` (or TEST_REDIS) narrows the matrix, e.g.
# ``--redis cluster``; ``standalone_only`` keeps a test off it, with its reason.
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--redis", default=os.environ.get("TEST_REDIS", ",".join(NAMES)),
                     help="the Redis deployments of the conformance matrix, comma-separated "
                          f"(default: all of {', '.join(NAMES)}; redis always runs)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "redis_server" not in metafunc.fixturenames:
        return
    chosen = [n.strip() for n in str(metafunc.config.getoption("--redis")).split(",")]
    unknown = set(chosen) - set(NAMES)
    if unknown:
        raise pytest.UsageError(f"--redis: unknown {sorted(unknown)}; one of {NAMES}")
    node = metafunc.definition
    eligible = (node.get_closest_marker("matrix") is not None
                or Path(node.path).parent.name == "integration") \
        and node.get_closest_marker("standalone_only") is None
    names = [n for n in NAMES if n == "redis" or (eligible and n in chosen)]
    metafunc.parametrize("redis_server", names, indirect=True, scope="session")


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> Iterator[Topology]:
    """One real Redis deployment for the session (``request.param``, from the matrix);
    tests use distinct namespaces on it."""
    topology = start_topology(getattr(request, "param", "redis"))
    yield topology
    topology.kill()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (EC keys: fast)."""
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=test-ca",
        "-days", "2")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    return {name: d / name for name in ("ca.crt", "server.crt", "server.key")}


@pytest.fixture(scope="session")
def acl_redis(tls_files: dict[str, Path]) -> Iterator[AclRedis]:
    """redis-server with the default user off, an ACL user ``coord``, and a TLS port."""
    tls_port = free_port()
    server = RedisServer(extra=(
        "--user", "default", "off",
        "--user", "coord", "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all",
        "--tls-port", str(tls_port), "--tls-cert-file", str(tls_files["server.crt"]),
        "--tls-key-file", str(tls_files["server.key"]),
        "--tls-ca-cert-file", str(tls_files["ca.crt"]), "--tls-auth-clients", "no",
    )).start()
    yield AclRedis(server, tls_port, tls_files["ca.crt"])
    server.kill()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A three-master cluster for this test alone (a slot may move, a node may die)."""
    topology = Cluster()
    yield topology
    topology.kill()


@pytest.fixture
def sentinel() -> Iterator[SentinelSet]:
    """A master, a replica and Sentinels for this test alone (it may fail over)."""
    topology = SentinelSet()
    yield topology
    topology.kill()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for this test alone, free to kill and restart."""
    server = RedisServer().start()
    yield server
    with contextlib.suppress(Exception):
        server.kill()


@pytest.fixture
async def client(redis_server: Topology, namespace: str) -> AsyncIterator[redis.Redis]:
    """A client of the session's Redis for the test's namespace, replies as bytes (the
    coordinator's own client: short timeouts, no retries, the namespace's cluster slot)."""
    client = make_redis(redis_server.url, namespace=namespace)
    yield client
    await client.aclose()


@pytest.fixture
def attacker(client: redis.Redis) -> redis.Redis:
    """``client`` in the role of anyone who can publish and write to the namespace but
    has no signing key."""
    return client


@pytest.fixture
async def redis_text(redis_server: Topology, namespace: str) -> AsyncIterator[redis.Redis]:
    """``client``, with replies decoded to text."""
    client = make_redis(redis_server.url, namespace=namespace, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def connect_redis(namespace: str) -> AsyncIterator[Callable[..., redis.Redis]]:
    """Makes clients of any Redis (``own_redis`` ones too) for the test's namespace;
    closes them afterwards."""
    made: list[redis.Redis] = []

    def connect(url: str, decode_responses: bool = False) -> redis.Redis:
        made.append(make_redis(url, namespace=namespace, decode_responses=decode_responses))
        return made[-1]

    yield connect
    for client in made:
        with contextlib.suppress(Exception):
            await client.aclose()


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    name = request.node.name.replace("[", "-").replace("]", "")
    return ("t-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in name))[:60]


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[list[BackendProcess]]:
    """Collects the backend processes a test starts and stops them all afterwards."""
    started: list[BackendProcess] = []
    yield started
    for proc in started:
        if proc.proc is not None:
            proc.kill()  # also closes the log of one that already exited


@pytest.fixture
def start_backend(backends: list[BackendProcess], tmp_path: Path):
    def start(env: dict[str, str], wait: bool = True) -> BackendProcess:
        proc = BackendProcess({"COORD_ENVIRONMENT": "test", **env},
                              tmp_path / f"backend-{len(backends)}.log")
        backends.append(proc)
        return proc.start(wait=wait)
    return start


@pytest.fixture
def follow_cli() -> Iterator[Callable[..., CliProcess]]:
    """Starts long-running ``coordinator`` commands; kills whatever is left afterwards."""
    started: list[CliProcess] = []

    def start(*args: str, env: dict[str, str]) -> CliProcess:
        started.append(CliProcess(*args, env=env))
        return started[-1]

    yield start
    for proc in started:
        proc.kill()


# Fixtures that mean a test needs a redis-server, or starts backend processes: a test
# that uses one carries the marker, so that `-m "not redis"` and `-m "not e2e"` select
# what they say. And the folders agree with the markers: every test under tests/e2e/
# (and the benchmarks' smoke tests) is `e2e`, and no other is.
NEEDS_REDIS = {"redis_server", "own_redis", "acl_redis", "client", "redis_text", "attacker"}
STARTS_BACKENDS = {"start_backend", "backends"}
E2E_FOLDERS = ("e2e", "bench")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    wrong = []
    for item in items:
        marks = {mark.name for mark in item.iter_markers()}
        fixtures = set(getattr(item, "fixturenames", ()))
        in_e2e = Path(item.path).parent.name in E2E_FOLDERS
        if fixtures & NEEDS_REDIS and "redis" not in marks:
            wrong.append(f"{item.nodeid}: uses {sorted(fixtures & NEEDS_REDIS)}, lacks `redis`")
        if fixtures & STARTS_BACKENDS and "e2e" not in marks:
            wrong.append(f"{item.nodeid}: starts backends, lacks `e2e`")
        if "cluster" in fixtures or "[cluster" in item.nodeid:  # a Redis Cluster of its own
            item.add_marker(pytest.mark.cluster)
        if in_e2e != ("e2e" in marks):
            wrong.append(f"{item.nodeid}: marked e2e {'e2e' in marks}, in tests/e2e {in_e2e}")
    if wrong:
        raise pytest.UsageError("tests with the wrong markers:\n" + "\n".join(wrong))


def pytest_report_header() -> str:
    with os.popen("redis-server --version") as out:  # closed: waits, no ResourceWarning
        return f"redis-server: {out.read().strip()}"
