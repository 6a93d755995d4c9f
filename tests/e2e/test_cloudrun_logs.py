"""Logs as Cloud Logging reads them: one JSON object per line on stderr, with
``severity`` and the instance id, under COORD_LOG_FORMAT=json and by default on Cloud
Run (K_SERVICE set). The run covers start-up, a traceback (an early connection with
the gate off) and the SIGTERM drain."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from websockets import ConnectionClosedError
from websockets.asyncio.client import connect

from tests.support import ROOT, BackendProcess, free_port, wait_for_phase, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

SEVERITIES = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


@pytest.mark.parametrize("how", [{"COORD_LOG_FORMAT": "json"},
                                 {"K_SERVICE": "ws-coordinator"}], ids=["explicit", "cloud-run"])
async def test_every_stderr_line_is_a_json_object_with_severity_and_instance(
        tmp_path, redis_server, namespace, how):
    instance = f"{namespace}-i1"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COORD_", "K_"))}
    env |= {"COORD_REDIS_URL": redis_server.url, "COORD_NAMESPACE": namespace,
            "COORD_INSTANCE_ID": instance, "COORD_GATE": "off", "COORD_DRAIN_GRACE": "0.2",
            "BACKEND_PHASE_DURATIONS": "services=3", "HOST": "127.0.0.1", "PORT": str(port),
            "PYTHONUNBUFFERED": "1", **how}
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "backend"], cwd=ROOT, env=env,
                                stdout=out, stderr=err)
    try:
        probe = BackendProcess({}, tmp_path / "unused.log", port=port)
        wait_until(lambda: probe.get("/health/live")[0] == 200, 20, what="the backend")
        wait_for_phase(probe, ("services",))
        with pytest.raises(ConnectionClosedError):  # no gate: the early connection fails
            async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                await ws.recv()
        probe.wait_ready()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    lines = stderr.read_text().splitlines()
    assert len(lines) >= 5, lines
    entries = []
    for line in lines:
        entry = json.loads(line)  # every line, not only most of them
        assert isinstance(entry, dict), line
        assert entry["severity"] in SEVERITIES and entry["instance"] == instance, line
        assert isinstance(entry["message"], str), line
        entries.append(entry)
    assert any("Traceback" in e.get("exception", "") for e in entries)  # on one line
    assert any(e["severity"] == "ERROR" for e in entries)
    assert any("drain" in e["message"].lower() for e in entries)
    assert stdout.read_text() == ""
