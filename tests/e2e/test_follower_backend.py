"""The reference backend as a follower (COORD_ROLE=follower: another process runs the
instance's startup) serves: it builds its own chat services in phases of its own, and
admits no one before both the instance and it are ready. It once closed every client
it admitted with 1011: its services were never built (a follower could not run phases)."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import CHAT, backend_env, chat, health, storm, tally, wait_for_phase

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

CLIENTS = 6


async def test_a_follower_backend_admits_only_once_its_own_services_are_built(
        start_backend, redis_server, namespace):
    instance = f"{namespace}-shared"
    owner = start_backend(backend_env(
        redis_url=redis_server.url, namespace=namespace, instance=instance,
        BACKEND_PHASE_DURATIONS="services=2"), wait=True)
    # Its own services take longer than the owner's: the instance is ready first.
    follower = start_backend(backend_env(
        redis_url=redis_server.url, namespace=namespace, instance=instance,
        COORD_ROLE="follower", BACKEND_PHASE_DURATIONS="services=4"), wait=True)
    await asyncio.to_thread(wait_for_phase, owner, ["services"])

    outcomes = await storm(follower.ws_url, CLIENTS)

    assert tally(outcomes) == {CHAT: CLIENTS}, tally(outcomes)
    assert all(o.welcome == {"type": "welcome", "instance": instance} for o in outcomes)
    assert (await chat(follower.ws_url)).kind == CHAT  # and once ready, at once
    status, body = await asyncio.to_thread(health, follower)
    assert status == 200 and body["state"] == "ready", body
    log = follower.log()
    assert "local phase services done" in log and "1011" not in log, log
