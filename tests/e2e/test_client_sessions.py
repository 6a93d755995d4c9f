"""``coordinator.client.sessions``: staying connected through the closes a deploy brings
(1012 from a drain or at a maximum age), no sooner than the server's hint; against a real
uvicorn that answers as a draining gate would."""

from __future__ import annotations

import contextlib

import pytest
from websockets import ConnectionClosed

from coordinator.client import RetryPolicy, sessions
from tests.support import Scripted, serving

pytestmark = pytest.mark.e2e  # a uvicorn server in this process

QUICK = RetryPolicy(base_delay=0.01, max_delay=0.02)


async def test_a_1012_close_is_followed_by_a_new_session_after_the_hint() -> None:
    app = Scripted(("welcome_then_close", 1012, {"reason": "draining", "retry_after": 1}),
                   ("welcome_then_close", 1012, {"reason": "max_age", "retry_after": 1}))
    async with serving(app) as url:
        seen = []
        async for session in sessions(url, policy=QUICK):
            seen.append(session.first_message)
            if len(seen) < 3:
                async for _ in session.messages():
                    pass  # until the server closes it (1012: the iteration just ends)
            else:
                break  # the third one stays open: leaving the loop closes it
        assert len(seen) == 3 and len(app.arrivals) == 3
        gaps = [b - a for a, b in zip(app.arrivals, app.arrivals[1:], strict=False)]
        assert all(gap >= 1.0 for gap in gaps), gaps  # never sooner than the hint


async def test_a_normal_close_or_1011_ends_the_loop() -> None:
    for code in (1000, 1011):
        app = Scripted(("welcome_then_close", code, {"reason": "bye"}))
        async with serving(app) as url:
            count = 0
            async for session in sessions(url, policy=QUICK):
                count += 1
                with contextlib.suppress(ConnectionClosed):  # 1011 raises; 1000 ends
                    async for _ in session.messages():
                        pass
            assert count == 1 and len(app.arrivals) == 1  # no reconnect
