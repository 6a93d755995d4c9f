"""Every benchmark runs, tiny, through ``python -m bench NAME --smoke`` and prints its
ratio lines. Timings are never asserted here: only bench/ measures, on purpose."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bench.__main__ import BENCHMARKS
from tests.support import ROOT

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

RATIO = re.compile(r"^ratio (?P<key>[\w.]+) = (?P<value>-?[\d.]+|inf|nan)  goal (?:[<>]= [\d.]+|-)"
                   r"  (?:met|MISSED|no goal)  \(.+\)$", re.MULTILINE)

EXPECTED = {
    "fast_path": {"throughput", "server_cpu_bare_vs_gated", "redis_commands_per_connection"},
    "release_latency": {"pubsub.first_101_p99_ms", "same_process.first_101_p99_ms",
                        "pubsub.last_of_5_vs_fresh", "same_process.last_of_5_vs_fresh",
                        "pubsub.p99_speedup_vs_polling", "same_process.p99_speedup_vs_polling",
                        "lost.max_delay_vs_backstop_bound"},
    "startup_storm": {"close_1011"},
    "fleet_scale": {"round_trips_per_page", "heartbeat_round_trips_per_interval"},
    "lease_throughput": {"pairs_vs_raw_evalsha"},
    "memory": {"gate_kib_per_held", "gated_vs_bare"},
    "rolling_deploy": {f"{scenario}.{key}" for scenario in ("off", "on") for key in (
        "close_1011", "http_500", "never_served_again", "served_on_first_retry",
        "disconnect_to_chat_p99_s", "handshakes_per_reconnect",
        "handshakes_per_client_in_deploy", "handshakes_per_client")}
    | {"on.peak_handshakes_per_100ms_vs_off", "on.fleet_peak_per_100ms_vs_off"},
    "parser": {f"{metric}.{arm}" for arm in ("hiredis", "python") for metric in (
        "fleet.script_p50_ms", "fleet.pipeline_p50_ms", "release.first_101_p99_ms")}
    | {f"{metric}.hiredis_vs_python" for metric in (
        "fleet.script", "fleet.pipeline", "fleet.script_reads_alone",
        "fleet.pipeline_reads_alone", "release.first_101_p99", "release.first_101_p50",
        "release.ready_seen_p50", "owner.write_publish_p50", "hop.subscriber_p50")},
    "forged_fleet": {"health_live_p99_ms", "health_live_p99.forged_vs_clean",
                     "redis_blocked_ms"},
}


def test_every_benchmark_has_a_smoke_expectation():
    assert set(EXPECTED) == set(BENCHMARKS)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_runs_tiny_and_prints_its_ratios(name):
    done = subprocess.run([sys.executable, "-m", "bench", name, "--smoke"], cwd=ROOT,
                          capture_output=True, text=True, timeout=110, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"== {name} (smoke" in done.stdout, output
    keys = {m["key"] for m in RATIO.finditer(done.stdout)}
    assert {f"{name}.{key}" for key in EXPECTED[name]} <= keys, output


def test_unknown_benchmark_is_a_clear_error():
    done = subprocess.run([sys.executable, "-m", "bench", "no_such_bench"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "unknown benchmark(s) no_such_bench" in done.stderr
