"""bench/parser.py runs tiny, both arms in one process: each prints its figures, and each
client it times really parsed with the parser its arm names. No timing is asserted."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support import ROOT

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

ARMS = ("hiredis", "python")


@pytest.fixture(scope="module")
def output():
    done = subprocess.run([sys.executable, "-m", "bench.parser", "--smoke"], cwd=ROOT,
                          capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_both_arms_print_every_figure(output):
    lines = output.splitlines()
    for arm in ARMS:
        for figure in ("script ", "script reads alone", "pipeline ", "pipeline reads alone"):
            assert any(line.startswith("   fleet ") and figure in line and f" {arm}" in line
                       and " p50 " in line and " p99 " in line for line in lines), (arm, figure)
        for figure in ("first 101", "last 101", "the follower saw ready",
                       "write+publish", "subscriber"):
            assert any(f" {arm} " in line and figure in line and " p50 " in line
                       for line in lines), (arm, figure)
    assert "script path, parser aside: Redis runs" in output


def test_each_arm_parses_with_its_own_parser(output):
    assert "fleet hiredis client's parser: _AsyncHiredisParser\n" in output
    # RESP3 on redis-py 8 (its default), RESP2 before (bin/test-versions floor).
    assert re.search(r"fleet python  client's parser: _AsyncRESP[23]Parser\n", output)
    # The hop's python subscriber is coordinator._redis.pubsub's: the parser every follower uses.
    assert ("release hiredis owner-write parser, hop subscriber parser: "
            "_AsyncHiredisParser; _AsyncHiredisParser") in output
    assert re.search(r"release python  owner-write parser, hop subscriber parser: "
                     r"_AsyncRESP([23])Parser; DiscardingRESP\1Parser", output)
