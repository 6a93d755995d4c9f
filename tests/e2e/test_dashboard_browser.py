"""The dashboard in a real headless Chromium (Debian's ``chromium``), against real Redis.

Chromium is driven over its DevTools protocol with the ``websockets`` library the project
already depends on, so no driver or browser is downloaded. Each test saves a screenshot
under ``artifacts/`` (gitignored) and prints its path.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from websockets.asyncio.client import ClientConnection, connect

from coordinator.contract.keys import Keys
from tests.support import (
    ROOT,
    BackendProcess,
    Dashboard,
    RedisServer,
    async_wait_until,
    event,
    free_port,
    instance_record,
    publish,
    put_record,
    subscribers,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  "--hide-scrollbars", "--window-size=1360,860")
ARTIFACTS = ROOT / "artifacts"

# What the page shows, read from its DOM: the rows as a person reads them.
ROWS_JS = """Array.from(document.querySelectorAll('#instances tbody tr')).map(tr => ({
  id: tr.querySelector('.id').textContent,
  state: tr.querySelector('.pill').textContent,
  phase: tr.querySelector('.phase-name').textContent,
  held: tr.querySelector('.held').textContent,
  open: tr.querySelector('.open').textContent,
}))"""


def _first_page(port: int) -> dict[str, Any] | None:
    """The first page target DevTools lists, if it lists one yet."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
        return next((t for t in json.load(r) if t["type"] == "page"), None)


class Chromium:
    """One headless Chromium page, over the DevTools protocol."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self.ws: ClientConnection | None = None
        self.errors: list[str] = []  # uncaught exceptions and console errors on the page
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> Chromium:
        if not Path(CHROMIUM).exists():
            raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
        self.profile.mkdir(parents=True, exist_ok=True)
        port_file = self.profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)  # a previous run's port would mislead us
        self.proc = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lines = await async_wait_until(
            lambda: port_file.exists() and len(port_file.read_text().split()) >= 2 and
            port_file.read_text().split(), 30, interval=0.1, what="chromium's DevTools port")
        page = await async_wait_until(lambda: _first_page(int(lines[0])), 30, interval=0.1,
                                      what="chromium's first page target")
        self.ws = await connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self._reader = asyncio.create_task(self._read(), name="chromium-reader")
        await self.call("Page.enable")
        await self.call("Runtime.enable")
        return self

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self.ws is not None:
            await self.ws.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    async def _read(self) -> None:
        assert self.ws is not None
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg:
                future = self._pending.pop(msg["id"], None)
                if future is not None and not future.done():
                    future.set_result(msg)
            elif msg.get("method") == "Runtime.exceptionThrown":
                self.errors.append(json.dumps(msg["params"]["exceptionDetails"])[:500])
            elif msg.get("method") == "Runtime.consoleAPICalled" \
                    and msg["params"].get("type") == "error":
                self.errors.append(json.dumps(msg["params"].get("args"))[:500])

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        msg_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    async def goto(self, url: str) -> None:
        result = await self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise RuntimeError(f"navigating to {url}: {result['errorText']}")

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, name: str) -> Path:
        metrics = await self.call("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                               clip={"x": 0, "y": 0, "width": size["width"],
                                     "height": size["height"], "scale": 1})
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        path.write_bytes(base64.b64decode(shot["data"]))
        print(f"screenshot: {path}")
        return path

    async def rows(self) -> list[dict[str, str]]:
        return list(await self.evaluate(ROWS_JS))

    async def text(self, element_id: str) -> str:
        return str(await self.evaluate(f"document.getElementById({json.dumps(element_id)})"
                                       ".textContent"))


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Chromium]:
    chromium = Chromium(tmp_path / "chromium-profile")
    try:
        yield await chromium.start()
    finally:
        await chromium.close()


async def _held_client(url: str) -> dict[str, Any]:
    """A chat client that connects during `services`: held, then welcomed."""
    async with connect(url, open_timeout=40) as ws:
        return dict(json.loads(await ws.recv()))


async def test_dashboard_follows_three_instances_through_startup_holds_and_a_kill(
        redis_server: RedisServer, namespace: str, start_backend: Any,
        browser: Chromium) -> None:
    env = {"COORD_REDIS_URL": redis_server.url, "COORD_NAMESPACE": namespace,
           "COORD_HEARTBEAT_INTERVAL": "1", "COORD_INSTANCE_TTL": "3",
           "BACKEND_PHASE_DURATIONS": "init=0.05,dependencies=0.1,database=0.1,cache=0.1,"
                                      "services=8,websocket=0.1,finalize=0.1"}
    procs: list[BackendProcess] = [
        start_backend({**env, "COORD_INSTANCE_ID": f"dash-{i}"}, wait=False) for i in range(3)]
    await async_wait_until(lambda: procs[0].get("/health/live")[0] == 200, 30,
                           what="the first backend to listen")
    await browser.goto(procs[0].http_url + "/dashboard/")

    seen = await async_wait_until(lambda: _all_three(browser, "phase", "services"), 30,
                                  interval=0.2, what="the page to show three in services")
    assert sorted(seen) == ["dash-0", "dash-1", "dash-2"]

    clients = [asyncio.create_task(_held_client(p.ws_url)) for p in procs for _ in range(2)]
    try:
        await async_wait_until(lambda: _total_held(browser), 15, interval=0.2,
                               what="the page to show held connections")
        assert int(await browser.text("total-held")) > 0
        held_rows = [r for r in await browser.rows() if not r["held"].startswith("0 ")]
        assert held_rows, "a row shows its held count against its cap"
        assert all(" / " in r["held"] for r in held_rows)
        await browser.screenshot("dashboard-starting.png")

        states = await async_wait_until(lambda: _all_three(browser, "state", "ready"), 40,
                                        interval=0.2, what="the page to show three ready")
        assert sorted(states) == ["dash-0", "dash-1", "dash-2"]
        welcomes = await asyncio.wait_for(asyncio.gather(*clients), 30)
    finally:
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
    assert all(w["type"] == "welcome" for w in welcomes), welcomes
    await async_wait_until(lambda: _text_is(browser, "total-ready", "3"), 10, interval=0.2,
                           what="the totals to count three ready")

    # Open connections: three clients stay on dash-0 and one on dash-1; the "Open" column
    # shows each instance's own count (from its heartbeat), the totals their sum.
    staying = [await connect(procs[i].ws_url, open_timeout=10) for i in (0, 0, 0, 1)]
    try:
        for ws in staying:
            assert json.loads(await ws.recv())["type"] == "welcome"
        opened = await async_wait_until(lambda: _open_are(browser, ["3", "1", "0"]), 15,
                                        interval=0.2, what="the page to show open connections")
        assert opened == {"dash-0": "3", "dash-1": "1", "dash-2": "0"}
        assert await browser.text("total-open") == "4"
        await browser.screenshot("dashboard-ready.png")
    finally:
        for ws in staying:
            await ws.close()

    procs[2].kill()
    await async_wait_until(lambda: _ids_are(browser, ["dash-0", "dash-1"]), 20, interval=0.2,
                           what="the killed instance to leave the page")
    assert await browser.text("total-instances") == "2"
    await browser.screenshot("dashboard-after-kill.png")
    assert browser.errors == []


async def _all_three(browser: Chromium, field: str, wanted: str) -> dict[str, str] | None:
    by_id = {r["id"]: r[field] for r in await browser.rows()}
    return by_id if len(by_id) == 3 and set(by_id.values()) == {wanted} else None


async def _open_are(browser: Chromium, wanted: list[str]) -> dict[str, str] | None:
    by_id = {r["id"]: r["open"] for r in await browser.rows()}
    return by_id if [by_id.get(f"dash-{i}") for i in range(3)] == wanted else None


async def _total_held(browser: Chromium) -> bool:
    return int(await browser.text("total-held")) > 0


async def _text_is(browser: Chromium, element_id: str, wanted: str) -> bool:
    try:
        return await browser.text(element_id) == wanted
    except RuntimeError:  # the page is still loading: no such element yet
        return False


async def _ids_are(browser: Chromium, wanted: list[str]) -> bool:
    return sorted(r["id"] for r in await browser.rows()) == wanted


HOSTILE_ID = '<script>window.pwned = "script"</script><img src=x onerror="window.pwned = 1">'


@contextlib.contextmanager
def _standalone_dashboard(redis_url: str, namespace: str, log: Path,
                          port: int | None = None) -> Iterator[str]:
    """``coordinator dashboard`` for the block; its URL."""
    dashboard = Dashboard(redis_url, namespace, log, port)
    try:
        yield dashboard.wait_listening().url
    finally:
        dashboard.stop()


async def test_instance_ids_and_hosts_from_redis_render_as_text(
        redis_server: RedisServer, client: redis.Redis, namespace: str, browser: Chromium,
        tmp_path: Path) -> None:
    keys = Keys(namespace)
    record = instance_record(HOSTILE_ID, time.time(), phase="<b>services</b>", depth=1,
                             ttl=60.0, host="<img src=x onerror=alert(1)>", version="1")
    try:
        await put_record(client, keys, record)
        with _standalone_dashboard(redis_server.url, namespace, tmp_path / "dash.log") as url:
            await browser.goto(url + "/")
            rows = await async_wait_until(browser.rows, 20, interval=0.2,
                                          what="the page to show the hostile record")
            assert [r["id"] for r in rows] == [HOSTILE_ID]
            assert rows[0]["phase"] == "<b>services</b>"
            meta = await browser.evaluate("document.querySelector('#instances .meta').textContent")
            assert meta.startswith("<img src=x onerror=alert(1)>")

            # An event carrying the same id goes through the live path too.
            await publish(client, keys.events, event(HOSTILE_ID, "ready", "<b>services</b>",
                                                    state="ready"))
            await async_wait_until(lambda: _states_are(browser, ["ready"]), 10, interval=0.2,
                                   what="the event to reach the page")
            await browser.screenshot("dashboard-hostile-id.png")

            injected = await browser.evaluate(
                "document.querySelectorAll('body script:not([src]), #instances img, "
                "#instances b').length")
            assert injected == 0
            assert await browser.evaluate("typeof window.pwned") == "undefined"
            assert browser.errors == []

            # Leaving the page ends its stream and with it the feed's subscription.
            assert await subscribers(client, keys.events) == 1
            await browser.goto("about:blank")
            await async_wait_until(lambda: _no_subscribers(client, keys), 10,
                                   what="the dashboard to unsubscribe")
    finally:
        await client.delete(keys.instance(HOSTILE_ID), keys.instances)


async def test_before_its_first_snapshot_the_page_says_it_waits_not_that_there_is_no_one(
        browser: Chromium, tmp_path: Path, redis_server: RedisServer,
        namespace: str) -> None:
    """The first paint said "No live instances" (and "Reconnecting") while three were
    live: nothing was known yet. With Redis unreachable no snapshot ever comes; with an
    empty namespace the first one says there is no one."""
    with _standalone_dashboard("redis://127.0.0.1:1/0", namespace, tmp_path / "a.log") as url:
        await browser.goto(url + "/dashboard/")
        await async_wait_until(lambda: _text_is(browser, "link", "degraded"), 20,
                               interval=0.2, what="the page to hear Redis is down")
        assert await browser.text("empty") == "Waiting for the first fleet snapshot\u2026"
    with _standalone_dashboard(redis_server.url, namespace, tmp_path / "b.log") as url:
        await browser.goto(url + "/dashboard/")
        await async_wait_until(
            lambda: _text_is(browser, "empty", "No live instances in this namespace yet."),
            20, interval=0.2, what="the first snapshot, of no one")
    assert browser.errors == []


async def _states_are(browser: Chromium, wanted: list[str]) -> bool:
    return [r["state"] for r in await browser.rows()] == wanted


async def test_the_page_reconnects_and_catches_up_when_the_server_restarts(
        redis_server: RedisServer, client: redis.Redis, namespace: str, browser: Chromium,
        tmp_path: Path) -> None:
    keys = Keys(namespace)
    port = free_port()
    log = tmp_path / "dash.log"
    try:
        await _add_record(client, keys, "before")
        with _standalone_dashboard(redis_server.url, namespace, log, port) as url:
            await browser.goto(url + "/dashboard/")
            await async_wait_until(lambda: _ids_are(browser, ["before"]), 20, interval=0.2,
                                   what="the page to show the first instance")
            assert await browser.text("link") == "live"
        await async_wait_until(lambda: _text_is(browser, "link", "reconnecting…"), 10,
                               interval=0.2, what="the page to notice the server left")
        await client.delete(keys.instance("before"), keys.instances)
        await _add_record(client, keys, "after")
        with _standalone_dashboard(redis_server.url, namespace, log, port):
            await async_wait_until(lambda: _ids_are(browser, ["after"]), 20, interval=0.2,
                                   what="the page to reconnect and take a fresh snapshot")
            await async_wait_until(lambda: _text_is(browser, "link", "live"), 10,
                                   interval=0.2, what="the page to say it is live again")
        assert browser.errors == []
    finally:
        await client.delete(keys.instance("before"), keys.instance("after"), keys.instances)


async def _add_record(client: redis.Redis, keys: Keys, instance_id: str) -> None:
    await put_record(client, keys, instance_record(instance_id, time.time(), state="ready",
                                                   phase="finalize", index=7, ttl=60.0))


async def _no_subscribers(client: redis.Redis, keys: Keys) -> bool:
    return await subscribers(client, keys.events) == 0

