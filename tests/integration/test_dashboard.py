"""The dashboard's server side on a real redis-server: the feed's shared subscription,
fan-out and bounds, drop counting and signed-only events, the event stream as pure ASGI
(hand-written receive/send), the page's routes and headers."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, MutableMapping
from importlib import resources
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from coordinator._redis.client import make_redis
from coordinator.contract.keys import Keys
from coordinator.instance.coordinator import Coordinator
from coordinator.ops.dashboard import FleetFeed, create_app, mount_dashboard, sse_frame
from coordinator.ops.dashboard.feed import PAGE_QUEUE_BYTES
from coordinator.ops.dashboard.web import EventStream
from coordinator.settings import Settings
from tests.support import (
    RedisServer,
    async_wait_until,
    event,
    free_port,
    instance_record,
    publish,
    put_record,
    subscribers,
)

pytestmark = pytest.mark.redis

DEADLINE = 5.0


def parse_frames(data: bytes) -> list[tuple[str, Any]]:
    """SSE frames -> (event, JSON data); fails on a frame with more than one data line."""
    frames = []
    for block in data.decode().split("\n\n"):
        lines = block.splitlines()
        kinds = [line[len("event: "):] for line in lines if line.startswith("event: ")]
        datas = [line[len("data: "):] for line in lines if line.startswith("data: ")]
        if kinds:
            assert len(kinds) == 1 and len(datas) == 1, block
            frames.append((kinds[0], json.loads(datas[0])))
    return frames


async def next_frame(queue: asyncio.Queue[bytes | None], kind: str,
                     where: Callable[[Any], bool] = lambda body: True) -> Any:
    """The data of the next frame of this kind that matches (others are skipped)."""
    async with asyncio.timeout(DEADLINE):
        while True:
            frame = await queue.get()
            assert frame is not None, "the stream ended"
            ((got, body),) = parse_frames(frame)
            if got == kind and where(body):
                return body


@pytest.fixture
def keys(namespace: str) -> Keys:
    return Keys(namespace)


async def add_instance(client: Any, keys: Keys, instance_id: str) -> None:
    await put_record(client, keys, instance_record(instance_id, time.time(), depth=2))


def test_a_frame_keeps_untrusted_text_on_one_data_line() -> None:
    body = {"instance": "a\nb\r\ndata: forged\n\nevent: x", "host": "\u2028<script>"}
    ((kind, parsed),) = parse_frames(sse_frame("event", body))
    assert (kind, parsed) == ("event", body)


async def test_a_page_gets_a_snapshot_then_live_events(client: Any, keys: Keys) -> None:
    await add_instance(client, keys, "a")
    feed = FleetFeed(client, keys, interval=60)
    async with feed.subscribe() as page:
        snapshot = await next_frame(page, "snapshot")
        assert [i["id"] for i in snapshot["instances"]] == ["a"]
        assert snapshot["totals"]["held"] == 2
        await async_wait_until(lambda: subscribers(client, keys.events), DEADLINE,
                               what="the subscription")
        await publish(client, keys.events, event("a", "ready", state="ready"))
        body = await next_frame(page, "event")
        assert (body["instance"], body["event"], body["state"]) == ("a", "ready", "ready")
        # An event asks for a fresh snapshot, well before the 60 s interval.
        await add_instance(client, keys, "b")
        await publish(client, keys.events, event("b", state="starting"))
        await next_frame(page, "snapshot", lambda s: len(s["instances"]) == 2)


async def test_pages_share_one_subscription_and_the_last_to_leave_ends_it(
        client: Any, keys: Keys) -> None:
    feed = FleetFeed(client, keys, interval=60)
    async with feed.subscribe() as first:
        async with feed.subscribe() as second:
            await async_wait_until(lambda: subscribers(client, keys.events), DEADLINE,
                                   what="the subscription")
            await publish(client, keys.events, event("a", state="starting"))
            assert (await next_frame(first, "event"))["instance"] == "a"
            assert (await next_frame(second, "event"))["instance"] == "a"
            assert await subscribers(client, keys.events) == 1
            assert len(dashboard_tasks()) == 2
        assert feed.pages == 1 and await subscribers(client, keys.events) == 1
    assert feed.pages == 0
    assert not dashboard_tasks()


def dashboard_tasks() -> list[asyncio.Task[Any]]:
    """The feed's and the streams' tasks still alive (the feed names them all)."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("dashboard-")]


async def test_invalid_events_are_dropped_and_counted(client: Any, keys: Keys) -> None:
    feed = FleetFeed(client, keys, interval=60)
    async with feed.subscribe() as page:
        await async_wait_until(lambda: subscribers(client, keys.events), DEADLINE,
                               what="the subscription")
        for junk in (b"not json", b"[]", b"x" * 5000, json.dumps({"v": 9}).encode()):
            await publish(client, keys.events, junk)
        await publish(client, keys.events, event("good", state="starting"))
        assert (await next_frame(page, "event"))["instance"] == "good"
    assert feed.drops.counts == {"invalid_json": 1, "invalid_schema": 1, "oversized": 1,
                                 "unknown_version": 1}


async def test_signed_fleets_show_only_signed_events(client: Any, keys: Keys) -> None:
    feed = FleetFeed(client, keys, interval=60, signing_key="k")
    async with feed.subscribe() as page:
        await async_wait_until(lambda: subscribers(client, keys.events), DEADLINE,
                               what="the subscription")
        await publish(client, keys.events, event("forged", state="starting"))
        signed = event("real", "ready", key="k", namespace=keys.namespace)
        await publish(client, keys.events, signed)
        assert (await next_frame(page, "event"))["instance"] == "real"
    assert feed.drops.counts == {"unsigned": 1}


async def test_a_slow_page_loses_its_oldest_frames_never_the_newest(
        client: Any, keys: Keys) -> None:
    feed = FleetFeed(client, keys, interval=60, queue_size=3)
    async with feed.subscribe() as page:
        for n in range(5):  # no await in between: the feed's tasks have not run yet
            feed.broadcast(sse_frame("event", {"n": n}))
        assert page.qsize() == 3 and feed.lagged == 2
        frames = [page.get_nowait() for _ in range(3)]
        assert [parse_frames(f or b"")[0][1]["n"] for f in frames] == [2, 3, 4]


async def test_a_slow_page_holds_a_bounded_number_of_bytes_too(
        client: Any, keys: Keys) -> None:
    feed = FleetFeed(client, keys, interval=60)
    big = sse_frame("snapshot", {"pad": "x" * (1 << 20)})  # a fleet of ~2,000 instances
    async with feed.subscribe() as page:
        for _ in range(20):
            feed.broadcast(big)
        assert page.bytes <= PAGE_QUEUE_BYTES and page.qsize() == PAGE_QUEUE_BYTES // len(big)
        assert feed.lagged == 20 - page.qsize()
        while not page.empty():
            page.get_nowait()
        assert page.bytes == 0


async def test_with_redis_down_pages_are_told_so(client: Any, keys: Keys) -> None:
    down = make_redis(f"redis://127.0.0.1:{free_port()}/0")
    feed = FleetFeed(down, keys, interval=60)
    try:
        async with feed.subscribe() as page:
            assert await next_frame(page, "status") == {"redis": "down",
                                                        "error": "ConnectionError"}
    finally:
        await down.aclose()


async def test_close_ends_every_stream(client: Any, keys: Keys) -> None:
    feed = FleetFeed(client, keys, interval=60)
    async with feed.subscribe() as page:
        feed.close()
        async with asyncio.timeout(DEADLINE):
            while (await page.get()) is not None:
                pass
    async with feed.subscribe() as late:
        assert late.get_nowait() is None
    assert not dashboard_tasks()


class Client:
    """The ASGI side of one HTTP client: what it was sent, and a way to hang up."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.hang_up = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(dict(message))

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


SCOPE = {"type": "http", "method": "GET", "path": "/events", "headers": []}


async def test_a_stream_ends_its_tasks_when_the_client_disconnects(
        client: Any, keys: Keys) -> None:
    await add_instance(client, keys, "a")
    feed = FleetFeed(client, keys, interval=0.05)
    http = Client()
    stream = asyncio.create_task(EventStream(feed)(SCOPE, http.receive, http.send))
    await async_wait_until(lambda: b"event: snapshot" in http.body, DEADLINE,
                           what="a snapshot on the stream")
    start = http.sent[0]
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    assert http.body.startswith(b"retry: 1000\n\n")
    assert len(dashboard_tasks()) == 4  # snapshots, events; pump, listen
    http.hang_up.set()
    await asyncio.wait_for(stream, DEADLINE)
    assert feed.pages == 0 and not dashboard_tasks()


async def test_a_closed_feed_ends_the_stream_and_turns_new_ones_away(
        client: Any, keys: Keys) -> None:
    feed = FleetFeed(client, keys, interval=60)
    http = Client()
    stream = asyncio.create_task(EventStream(feed)(SCOPE, http.receive, http.send))
    await async_wait_until(lambda: b"event: snapshot" in http.body, DEADLINE,
                           what="a snapshot on the stream")
    feed.close()
    await asyncio.wait_for(stream, DEADLINE)
    assert http.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    late = Client()
    await EventStream(feed)(SCOPE, late.receive, late.send)
    assert late.sent[0]["status"] == 503


async def test_the_standalone_server_serves_the_page_with_a_strict_policy() -> None:
    app, _feed = create_app(f"redis://127.0.0.1:{free_port()}/0", "dash")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dash") as http:
        assert (await http.get("/")).headers["location"] == "/dashboard/"
        page = await http.get("/dashboard/")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        for asset in re.findall(r'(?:src|href)="([^"]+)"', page.text):
            assert (await http.get("/dashboard/" + asset)).status_code == 200, asset
        assert (await http.get("/dashboard/static/../web.py")).status_code == 404


def test_the_page_never_parses_data_as_markup() -> None:
    """Every value from Redis reaches the DOM as text: no HTML sinks in the script."""
    script = (resources.files("coordinator.ops.dashboard") / "static" / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setAttribute('on", "srcdoc"):
        assert sink not in script, sink
    page = (resources.files("coordinator.ops.dashboard") / "static" / "index.html").read_text()
    assert "<script>" not in page and "http://" not in page and "https://" not in page


async def test_an_instance_serves_the_dashboard_and_ends_its_streams_when_draining(
        redis_server: RedisServer) -> None:
    coord = Coordinator(Settings(instance_id="i-1", namespace="dash"),
                        client=make_redis(redis_server.url, namespace="dash"))
    api = FastAPI()
    feed = mount_dashboard(api, coord)
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://i") as http:
        assert (await http.get("/dashboard/")).status_code == 200
        async with feed.subscribe() as page:
            coord.begin_drain()
            async with asyncio.timeout(DEADLINE):
                while (await page.get()) is not None:
                    pass
    assert feed.closed
    await coord.redis.aclose()


async def test_streams_beyond_the_cap_are_turned_away_with_retry_after(
        client: Any, keys: Keys) -> None:
    """Each open page may hold a queue of up to 4 MB: the number of pages is capped too."""
    feed = FleetFeed(client, keys, interval=60, max_pages=3)
    pages = [Client() for _ in range(3)]
    streams = [asyncio.create_task(EventStream(feed)(SCOPE, p.receive, p.send)) for p in pages]
    await async_wait_until(lambda: all(b"event: snapshot" in p.body for p in pages), DEADLINE,
                           what="three streams open")
    late = Client()
    await EventStream(feed)(SCOPE, late.receive, late.send)
    assert late.sent[0]["status"] == 503
    assert (b"retry-after", b"10") in late.sent[0]["headers"]
    assert feed.turned_away == 1 and feed.pages == 3
    pages[0].hang_up.set()
    await asyncio.wait_for(streams[0], DEADLINE)
    again = Client()
    stream = asyncio.create_task(EventStream(feed)(SCOPE, again.receive, again.send))
    await async_wait_until(lambda: b"event: snapshot" in again.body, DEADLINE,
                           what="a place freed by a page that left")
    for page in (*pages, again):
        page.hang_up.set()
    await asyncio.wait_for(asyncio.gather(*streams, stream), DEADLINE)
