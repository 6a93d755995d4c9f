"""The long-lived readers' subscription loop: ``on_up`` (the re-read of what messages may
have been lost for) runs only once the server has confirmed the subscribe. Run before,
a message published between the re-read and the subscribe went unseen until the next
one: a follower whose pub/sub delivered nothing released 0.05-0.99 s late."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from coordinator._redis import subscription
from coordinator._redis.subscription import Subscription


class SlowConfirmingPubSub:
    """Confirms each channel only on the reader's second ``get_message`` after it."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.queue: list[dict[str, Any] | None] = []
        self.following = True

    async def follow(self, *channels: str) -> None:
        self.log.append("subscribe sent")
        for channel in channels:
            self.queue += [None, {"type": "subscribe", "channel": channel.encode(), "data": 1}]

    async def get_message(self, *, ignore_subscribe_messages: bool, timeout: float
                          ) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        if self.queue:
            msg = self.queue.pop(0)
            if msg is not None:
                self.log.append("confirmed")
            return None if msg is not None and ignore_subscribe_messages else msg
        await asyncio.sleep(timeout)
        return None

    async def aclose(self) -> None:
        pass


async def test_on_up_runs_only_after_the_server_confirmed_every_channel(
        monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    monkeypatch.setattr(subscription, "bounded_pubsub", lambda _client: SlowConfirmingPubSub(log))
    up = asyncio.Event()

    async def on_up() -> None:
        log.append("re-read")
        up.set()

    sub = Subscription(object(), ["a", "b"], on_message=lambda _c, _d: None,  # type: ignore[arg-type]
                       on_up=on_up)
    task = asyncio.create_task(sub.run())
    try:
        await asyncio.wait_for(up.wait(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert log == ["subscribe sent", "confirmed", "confirmed", "re-read"]
