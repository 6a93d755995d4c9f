"""The Redis client: bounded pool, short timeouts, no hidden retries.

The coordinator handles every failure itself (falls back to local state, reconnects
with backoff), so redis-py's own retries are switched off: they would only stretch an
outage into hangs. All but one: a command a cluster refused with MOVED (it did not run)
runs once more, on the slot's new owner (topology.py).
"""

from __future__ import annotations

import asyncio

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from coordinator._redis import topology

REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
CONNECT_TIMEOUT = 1.0
COMMAND_TIMEOUT = 2.0
MAX_CONNECTIONS = 32


def refused(exc: BaseException) -> bool:
    """Whether Redis refused a command for want of an ACL permission (NOPERM), directly
    or inside a script (whose error does not say ``NOPERM`` nor name the command)."""
    return isinstance(exc, NoPermissionError) or (
        isinstance(exc, ResponseError) and "can't run this command" in str(exc))


def make_redis(url: str, *, namespace: str = "coord", mode: str = "auto",
               max_connections: int = MAX_CONNECTIONS,
               health_check_interval: float = 5.0, decode_responses: bool = False,
               ) -> redis.Redis:
    """A client for namespace ``namespace`` at ``url``: one server, the master of the
    namespace's slot in a cluster, or the master a ``redis+sentinel://`` URL names
    (topology.py; ``mode`` is COORD_REDIS_MODE)."""
    pool = topology.connection_pool(
        url,
        mode=mode,
        namespace=namespace,
        max_connections=max_connections,
        timeout=COMMAND_TIMEOUT,  # wait for a free connection at most this long
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=COMMAND_TIMEOUT,
        health_check_interval=health_check_interval,
        decode_responses=decode_responses,
        # No retry but one: a command the cluster refused because the slot moved
        # (topology.SlotMoved: it did not run) runs again once, on the new owner.
        retry=Retry(NoBackoff(), 1, supported_errors=(topology.SlotMoved,)),
    )
    return redis.Redis.from_pool(pool)  # owns the pool: aclose() closes its sockets
