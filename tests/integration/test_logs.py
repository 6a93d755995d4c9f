"""The coordinator's logs under a host application that set up no logging, and under one
that did: visible without a setup call, never printed twice, at the host's levels."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT, RedisServer

pytestmark = pytest.mark.redis

PROGRAM = """
import asyncio, logging, sys
from coordinator import Coordinator, Settings
if sys.argv[2] == "configured":
    logging.basicConfig(level=logging.WARNING, format="ROOT %(name)s %(message)s")
async def main():
    coord = Coordinator(Settings(redis_url=sys.argv[1], namespace="t-logs",
                                 phases=("init", "services"), ready_phase="services"))
    async with coord:
        if sys.argv[2] == "late":  # the application sets up logging once it is running
            logging.basicConfig(level=logging.WARNING, format="ROOT %(name)s %(message)s")
        async with coord.phase("init"):
            pass
        async with coord.phase("services"):
            pass
        logging.getLogger("coordinator").info("an info")
        logging.getLogger("coordinator").warning("a warning")
asyncio.run(main())
"""


def run(url: str, mode: str) -> str:
    done = subprocess.run([sys.executable, "-c", PROGRAM, url, mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stderr


def test_with_no_logging_set_up_the_coordinator_logs_info_to_stderr(redis_server: RedisServer):
    err = run(redis_server.url, "bare")
    assert "INFO:     coordinator: redis link up" in err
    assert err.count("a warning") == 1


def test_with_logging_set_up_records_follow_the_host_config_and_are_not_doubled(
        redis_server: RedisServer):
    err = run(redis_server.url, "configured")
    assert "redis link up" not in err  # INFO, below the host's WARNING
    assert err.count("a warning") == 1 and "ROOT coordinator a warning" in err


def test_logging_set_up_after_the_start_takes_over_at_its_own_levels(redis_server: RedisServer):
    err = run(redis_server.url, "late")
    assert "redis link up" in err  # before the host configured anything: the fallback
    assert "an info" not in err  # after it: the host's WARNING level
    assert err.count("a warning") == 1 and "ROOT coordinator a warning" in err
