"""Where a namespace lives: one server, a cluster, or a master that Sentinel names.

Every key and channel of namespace ``N`` starts with the hash tag ``{N}`` (keys.py), so
in a cluster they all hash to one slot, served by one master. The coordinator therefore
needs no cluster client: its pool (:class:`TopologyPool`) connects to the master that
owns that slot, which it asks of the cluster (``CLUSTER SLOTS``) before it connects. A
``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN`` or ``READONLY`` reply (a failover or a
slot migration) makes the pool forget the owner, and the command, which the server did
not run, is run once more on a new connection, which asks again, of every node the
cluster last named; a failed connect forgets it too (a failover: the coordinator gates
on local state and connects again). On a cluster whose servers have it (7.0+),
channels use sharded pub/sub (``SPUBLISH``, ``SSUBSCRIBE``): a message goes to one
shard, not to every node.

``COORD_REDIS_MODE=auto`` (the default) asks the server itself (``HELLO``'s ``mode``)
at the first connection; ``standalone`` and ``cluster`` say it instead. A
``redis+sentinel://`` URL is Sentinel mode: redis-py's Sentinel support finds the
master, and finds it again after a failover (a master turned replica answers
``READONLY``, which disconnects).
"""

from __future__ import annotations

import asyncio
import enum
import ssl
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis.asyncio as redis
from redis.asyncio.connection import (
    BlockingConnectionPool,
    Connection,
    SSLConnection,
    parse_url,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ConnectionError,
    MovedError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from coordinator._compat import redispy

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
MAX_SEEDS = 32  # cluster nodes remembered to ask for the slot's owner
RESOLVE_DEADLINE = 5.0  # seconds finding the slot's owner may take, however many nodes
MOVED = (AskError, TryAgainError, ClusterDownError, ReadOnlyError)  # AskError covers MOVED


class SlotMoved(ConnectionError):
    """The namespace's slot is served elsewhere now: the command was not run, and the
    client runs it once more on a connection to the new owner (connections.make_redis)."""


class ClusterUnsupported(RedisError):
    """A cluster whose channels are sharded, and a redis-py without async SSUBSCRIBE:
    the instance gates on local state, as in an outage, and says why."""


class Mode(enum.StrEnum):
    AUTO = "auto"
    STANDALONE = "standalone"
    CLUSTER = "cluster"
    SENTINEL = "sentinel"


@dataclass(frozen=True)
class Resolved:
    """What a pool learned at its last resolution."""

    address: tuple[str, int]
    mode: Mode
    sharded: bool  # channels use SPUBLISH and SSUBSCRIBE


STANDALONE = Resolved(("", 0), Mode.STANDALONE, False)


class _Routed(redispy.ConnectHook):
    """A connection whose address its pool chooses at every connect (the slot's owner)."""

    connection_pool: TopologyPool
    host: str
    port: int

    def __init__(self, **kwargs: Any) -> None:
        self.connection_pool = kwargs.pop("connection_pool")
        super().__init__(**kwargs)

    async def before_connect(self) -> None:
        """Every (re)connect, however redis-py gets there, goes to the current owner."""
        self.host, self.port = (await self.connection_pool.resolve()).address

    def connect_failed(self) -> None:
        self.connection_pool.forget()

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        except MOVED as exc:
            self.connection_pool.forget(moved=isinstance(exc, MovedError))
            await self.disconnect()  # type: ignore[attr-defined]
            raise SlotMoved(f"the namespace's slot moved ({exc}); connecting again") from exc


class RoutedConnection(_Routed, Connection):
    pass


class RoutedSSLConnection(_Routed, SSLConnection):
    pass


class TopologyPool(BlockingConnectionPool):
    """A bounded pool whose connections go to the server that holds ``slot_key``'s slot:
    the URL's server itself, or in a cluster the master of that slot."""

    def __init__(self, *, mode: Mode, slot_key: str, **kwargs: Any) -> None:
        ssl = issubclass(kwargs.get("connection_class", Connection), SSLConnection)
        self._plain_class = SSLConnection if ssl else Connection
        kwargs["connection_class"] = RoutedSSLConnection if ssl else RoutedConnection
        super().__init__(**kwargs)
        self.connection_kwargs["connection_pool"] = weakref.proxy(self)
        self.mode = mode
        self.moved_seen = False  # a MOVED reply: a cluster, whatever HELLO said
        self.slot = key_slot(slot_key.encode())
        self.url_seed = (str(kwargs.get("host", "localhost")), int(kwargs.get("port", 6379)))
        self.seeds = [self.url_seed]
        self.resolved: Resolved | None = None
        self._resolving: asyncio.Lock | None = None

    def __repr__(self) -> str:  # not the kwargs: they hold a proxy of the pool itself
        return (f"<{type(self).__name__}(mode={self.mode}, seed={self.url_seed[0]}:"
                f"{self.url_seed[1]}, slot={self.slot})>")

    async def resolve(self) -> Resolved:
        """Where to connect, asked of the seeds the first time and after a forget."""
        if self.resolved is not None:
            return self.resolved
        if self._resolving is None:
            self._resolving = asyncio.Lock()
        async with self._resolving:
            if self.resolved is None:
                if self.mode is Mode.STANDALONE:  # nothing to ask
                    self.resolved = Resolved(self.url_seed, Mode.STANDALONE, False)
                else:
                    async with asyncio.timeout(RESOLVE_DEADLINE):
                        self.resolved = await self._ask_seeds()
            return self.resolved

    def forget(self, moved: bool = False) -> None:
        """Ask again at the next connect; ``moved``: a MOVED reply said this is a cluster
        (in auto mode, where HELLO was refused, that settles it)."""
        self.moved_seen = self.moved_seen or moved
        self.resolved = None

    async def _ask_seeds(self) -> Resolved:
        """The URL's node first, then the others the cluster last named; one that cannot
        be asked is dropped (the URL's is kept: it may be a name that moves)."""
        error: BaseException = ConnectionError("no cluster node to ask")
        for seed in list(self.seeds):
            try:
                return await self._ask(seed)
            except (TimeoutError, RedisError, OSError) as exc:
                error = exc
                if seed != self.url_seed and seed in self.seeds:
                    self.seeds.remove(seed)
        raise error

    async def _ask(self, seed: tuple[str, int]) -> Resolved:
        options = {k: v for k, v in self.connection_kwargs.items() if k != "connection_pool"}
        options.update(host=seed[0], port=seed[1])
        conn = self._plain_class(**options)
        try:
            await conn.connect()
            hello = await _hello(conn)
            said = hello.get("mode")
            if said == "sentinel":
                raise ResponseError(f"{seed[0]}:{seed[1]} is a Sentinel: use a "
                                    "redis+sentinel://host:port/<service> URL")
            if not (self.mode is Mode.CLUSTER or said == "cluster"
                    or (said is None and self.moved_seen)):
                return Resolved(seed, Mode.STANDALONE, False)
            await conn.send_command("CLUSTER", "SLOTS")
            owner = self._owner(await conn.read_response(), seed)
        finally:
            await conn.disconnect()
        if owner != seed:  # whether channels shard is the owner's to say (mixed versions)
            conn = self._plain_class(**{**options, "host": owner[0], "port": owner[1]})
            try:
                await conn.connect()
                hello = await _hello(conn)
            finally:
                await conn.disconnect()
        sharded = _major(str(hello.get("version", "0"))) >= 7
        if sharded and not redispy.SHARDED_PUBSUB:
            raise ClusterUnsupported(
                f"{owner[0]}:{owner[1]} is a Redis Cluster of 7.0 or later, whose channels "
                f"are sharded: that needs redis-py 8.0 or later (installed: "
                f"{redispy.INSTALLED_TEXT})")
        return Resolved(owner, Mode.CLUSTER, sharded)

    def _owner(self, ranges: Any, seed: tuple[str, int]) -> tuple[str, int]:
        """The master of our slot in a CLUSTER SLOTS reply; the nodes it names are the
        seeds for the next time (after the URL's own)."""
        owner = None
        seeds = [self.url_seed]
        for start, end, master, *replicas in ranges:
            for node in (master, *replicas):
                address = (_text(node[0]) or seed[0], int(node[1]))
                if address not in seeds and len(seeds) < MAX_SEEDS:
                    seeds.append(address)
            if int(start) <= self.slot <= int(end):
                owner = (_text(master[0]) or seed[0], int(master[1]))
        self.seeds = seeds
        if owner is None:
            raise ClusterDownError(f"no node of the cluster serves slot {self.slot}")
        return owner


class SentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool, bounded like the others; closes its Sentinel clients."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        for sentinel in self.sentinel_manager.sentinels:  # not a lookup under way
            await sentinel.connection_pool.disconnect(inuse_connections=False)


def mode_of(url: str, mode: Mode | str = Mode.AUTO) -> Mode:
    """The mode a URL and COORD_REDIS_MODE give before anything is asked of a server."""
    if url.partition("://")[0].lower() in SENTINEL_SCHEMES:
        return Mode.SENTINEL
    return Mode(mode)


def connection_pool(url: str, *, mode: Mode | str = Mode.AUTO, namespace: str = "coord",
                    **options: Any) -> redis.ConnectionPool:
    """The pool for ``url`` in ``mode`` that serves namespace ``namespace``; ``options``
    are connection and pool options (timeouts, ``max_connections``...)."""
    mode = mode_of(url, mode)
    if mode is Mode.SENTINEL:
        sentinels, service, master_options, sentinel_options = parse_sentinel_url(url)
        master_options, sentinel_options = _checked(master_options), _checked(sentinel_options)
        manager = Sentinel(sentinels, sentinel_kwargs={
            **_timeouts(options), "retry": Retry(NoBackoff(), 0), **sentinel_options},
                           **{**options, **master_options})
        pool: redis.ConnectionPool = SentinelPool(  # type: ignore[no-untyped-call]
            service, manager, **{
            **manager.connection_kwargs, "is_master": True, "check_connection": False})
        return pool
    if url.partition("://")[0].lower() == "unix":
        return BlockingConnectionPool.from_url(url, **options)
    return TopologyPool(mode=mode, slot_key=f"{{{namespace}}}",
                        **_checked({**options, **parse_url(url)}))


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any],
                                          dict[str, Any]]:
    """``redis+sentinel://[user:password@]host[:port][,host[:port]...]/<service>[/db]``
    (``rediss+sentinel://`` for TLS to both): the Sentinels, the service, the master's
    connection options, and the Sentinels' own (``sentinel_username`` and
    ``sentinel_password`` query options; TLS options apply to both)."""
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    parts = [p for p in path.split("/") if p]
    if not hosts or not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ValueError("expected redis+sentinel://[user:password@]host[:port][,host[:port]]"
                         "/<service>[/db]")
    sentinels = []
    for host in hosts.split(","):
        if host.startswith("["):  # [IPv6]:port
            name, _, port = host[1:].partition("]")
            port = port.removeprefix(":")
        else:
            name, _, port = host.partition(":")
        if not name:
            raise ValueError(f"expected host[:port], not {host!r}")
        sentinels.append((name, int(port) if port else SENTINEL_PORT))
    plain = "rediss" if scheme.startswith("rediss") else "redis"
    own: dict[str, Any] = {}
    query_options = []
    for pair in filter(None, query.split("&")):
        key, _, value = pair.partition("=")
        if key in ("sentinel_username", "sentinel_password"):
            own[key.removeprefix("sentinel_")] = unquote(value)
        else:
            query_options.append(pair)
    db = parts[1] if len(parts) == 2 else 0
    auth = f"{userinfo}@" if userinfo else ""
    master: dict[str, Any] = dict(parse_url(
        f"{plain}://{auth}localhost/{db}?{'&'.join(query_options)}"))
    for key in ("host", "port"):
        master.pop(key, None)
    tls = {k: v for k, v in master.items() if k.startswith("ssl") or k == "connection_class"}
    if tls.pop("connection_class", None) is not None:
        tls["ssl"] = True
        master.pop("connection_class")
        master["ssl"] = True
    return sentinels, unquote(parts[0]), master, {**tls, **own}


async def resolve(client: redis.Redis) -> Resolved:
    """Where ``client``'s commands go and whether its channels are sharded (a client on
    any other pool: standalone, unsharded)."""
    pool = client.connection_pool
    if isinstance(pool, TopologyPool):
        return await pool.resolve()
    if isinstance(pool, SentinelConnectionPool):
        return Resolved(("", 0), Mode.SENTINEL, False)
    return STANDALONE


def sharded(client: redis.Redis) -> bool:
    """Whether ``client``'s channels use sharded pub/sub, as its pool last learned."""
    pool = client.connection_pool
    return isinstance(pool, TopologyPool) and pool.resolved is not None \
        and pool.resolved.sharded


async def _hello(conn: Connection) -> dict[str, Any]:
    """The server's HELLO map (``mode``, ``version``); empty where HELLO is refused or
    unknown (then MOVED replies settle the mode)."""
    try:
        await conn.send_command("HELLO")
        reply = await conn.read_response()
    except ResponseError:
        return {}
    if isinstance(reply, dict):
        return {_text(k): _text(v) for k, v in reply.items()}
    return {_text(reply[i]): _text(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}


def _checked(options: dict[str, Any]) -> dict[str, Any]:
    """TLS ``options`` that check the server's host name unless the URL says
    ``ssl_check_hostname=false`` or asks for no certificate check at all
    (``ssl_cert_reqs=none``): redis-py 6.0 made that its default, 5.x did not."""
    tls = options.get("ssl") or issubclass(options.get("connection_class", Connection),
                                           SSLConnection)
    unchecked = str(options.get("ssl_cert_reqs", "")).lower() in ("none", "cert_none") \
        or options.get("ssl_cert_reqs") == ssl.CERT_NONE
    return {"ssl_check_hostname": True, **options} if tls and not unchecked else options


def _timeouts(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}


def _text(value: Any) -> Any:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0
