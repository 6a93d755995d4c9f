"""``coordinator dashboard`` as an operator runs it: a real process on a real Redis."""

from __future__ import annotations

import http.client
import signal
import socket
from pathlib import Path

import pytest

from tests.support import Dashboard, RedisServer, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def open_stream(port: int) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse] | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/dashboard/events")
        return conn, conn.getresponse()
    except OSError:
        conn.close()
        return None


def read_frame(resp: http.client.HTTPResponse) -> bytes:
    """One server-sent event: lines up to and including the blank line that ends it."""
    frame = b""
    while not frame.endswith(b"\n\n"):
        line = resp.readline()
        assert line, f"the stream ended inside a frame: {frame!r}"
        frame += line
    return frame


def test_sigterm_ends_open_streams_cleanly_and_exits_0(redis_server: RedisServer,
                                                       namespace: str, tmp_path: Path) -> None:
    dashboard = Dashboard(redis_server.url, namespace, tmp_path / "dashboard.log")
    conn = None
    try:
        conn, resp = wait_until(lambda: open_stream(dashboard.port), 20, interval=0.1,
                                what="the dashboard's event stream")
        assert resp.status == 200
        assert resp.getheader("content-type") == "text/event-stream; charset=utf-8"
        assert read_frame(resp) == b"retry: 1000\n\n"
        assert read_frame(resp).startswith(b"event: snapshot\n")  # the stream is live
        dashboard.proc.send_signal(signal.SIGTERM)
        # The server ends the stream itself (a complete chunked body, whole frames only)
        # instead of cutting the connection when its graceful-shutdown timeout runs out:
        # read() would raise IncompleteRead.
        rest = resp.read()
        assert rest == b"" or rest.endswith(b"\n\n"), rest
        # A clean stop is a success; a process ended by the signal itself (no handler,
        # or uvicorn's re-raise under the default action) would show -15 here.
        assert dashboard.stop() == 0, dashboard.log.read_text()
    finally:
        if conn is not None:
            conn.close()
        dashboard.stop(signal.SIGKILL)


def test_a_taken_port_is_one_clear_line_and_exit_status_2(redis_server: RedisServer,
                                                          tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        dashboard = Dashboard(redis_server.url, "t-taken", tmp_path / "dashboard.log",
                              port=taken.getsockname()[1])
        try:
            assert dashboard.proc.wait(20) == 2
        finally:
            dashboard.stop(signal.SIGKILL)
    output = dashboard.log.read_text()
    line = f"coordinator: error: cannot listen on 127.0.0.1:{dashboard.port}: "
    assert output.splitlines() == [line + "Address already in use"], output
    assert "/dashboard/" not in output  # no address announced that is not ours
