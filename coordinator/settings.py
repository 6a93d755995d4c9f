"""Every ``COORD_*`` variable, read once into one validated, immutable object.

A bad value raises :class:`ConfigError` naming the variable, so a process stops at
start-up with a message an operator can act on instead of misbehaving later.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from redis.asyncio import ConnectionPool
from redis.exceptions import RedisError

from coordinator._redis.topology import SENTINEL_SCHEMES, parse_sentinel_url
from coordinator.contract.keys import ID_PATTERN, NAME_PATTERN
from coordinator.contract.signing import Keyring
from coordinator.exceptions import ConfigError

DEFAULT_PHASES = ("init", "dependencies", "database", "cache", "services", "websocket", "finalize")
ROLES = ("owner", "follower")
REDIS_MODES = ("auto", "standalone", "cluster")
ENVIRONMENTS = ("local", "test", "development", "staging", "production")
# Base wait budget (seconds) for a connection that arrives in an earlier phase.
WAIT_BUDGETS = {"local": 1.0, "test": 1.0, "development": 3.0, "staging": 3.0, "production": 5.0}
CLOUD_RUN_READY_PHASE_BUDGET = 8.0

T = TypeVar("T")


def default_id_prefix(hostname: str | None = None) -> str:
    """How a generated instance id starts on this host: ``<host>-`` (then pid, random)."""
    host = socket.gethostname() if hostname is None else hostname
    return (re.sub(r"[^A-Za-z0-9_.\-]", "-", host)[:40] or "host") + "-"


def _default_instance_id() -> str:
    return f"{default_id_prefix()}{os.getpid()}-{secrets.token_hex(3)}"


def generated_on(instance_id: str, hostname: str) -> bool:
    """Whether ``instance_id`` has the form ``_default_instance_id`` gives on ``hostname``."""
    return re.fullmatch(re.escape(default_id_prefix(hostname)) + r"[0-9]+-[0-9a-f]{6}",
                        instance_id) is not None


@dataclass(frozen=True)
class Settings:
    """Everything the coordinator and the gate are told, validated once.

    Build it with :meth:`from_env` (the ``COORD_*`` variables, README: Configuration) or
    directly with keyword arguments, as the tests do. Every field is checked in
    ``__post_init__``: a bad value raises :class:`ConfigError` naming the variable, so a
    misconfigured process stops at start-up instead of misbehaving under load. Frozen,
    and its ``repr`` leaves out the Redis URL (it may carry a password) and the signing
    key.
    """

    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)  # has a password
    redis_mode: str = "auto"  # auto, standalone, cluster (a sentinel URL says sentinel)
    namespace: str = "coord"
    instance_id: str = field(default_factory=_default_instance_id)
    environment: str = "local"
    cloud_run: bool = False
    phases: tuple[str, ...] = DEFAULT_PHASES
    ready_phase: str = "services"
    near_ready_phases: int = 1
    max_queue: int = 50
    max_queue_time: float = 30.0
    fleet_max_queue: int | None = None
    heartbeat_interval: float = 2.0
    instance_ttl: float = 10.0
    timeout_multiplier: float = 1.0
    drain_grace: float = 5.0
    drain_spread: float | None = None  # None: half of drain_grace
    reject: str = "http"
    gate: bool = True
    signing_key: str | None = field(default=None, repr=False)
    log_format: str = "text"
    role: str = "owner"
    max_retry_after: int = 30
    slowstart: float = 0.0  # seconds; 0: off
    fleet_admit_rate: float | None = None  # new connections per second, fleet-wide
    fleet_admit_burst: float | None = None  # None: one second's worth of the rate
    max_connection_age: float | None = None  # seconds; None: off

    def __post_init__(self) -> None:
        _check("COORD_NAMESPACE", bool(NAME_PATTERN.fullmatch(self.namespace)), self.namespace,
               "1-64 characters of letters, digits, '_', '.', '-'")
        _check("COORD_INSTANCE_ID", bool(ID_PATTERN.fullmatch(self.instance_id)), self.instance_id,
               "1-128 characters of letters, digits, '_', '.', '-'")
        _check("COORD_ENVIRONMENT", self.environment in ENVIRONMENTS, self.environment,
               "one of " + ", ".join(ENVIRONMENTS))
        _check("COORD_PHASES", len(self.phases) > 0 and len(set(self.phases)) == len(self.phases)
               and all(NAME_PATTERN.fullmatch(p) for p in self.phases), ",".join(self.phases),
               "a comma-separated list of distinct phase names")
        _check("COORD_READY_PHASE", self.ready_phase in self.phases, self.ready_phase,
               "one of the phases: " + ", ".join(self.phases))
        _check("COORD_NEAR_READY_PHASES", self.near_ready_phases >= 0, self.near_ready_phases,
               "an integer >= 0")
        _check("COORD_MAX_QUEUE", self.max_queue >= 0, self.max_queue, "an integer >= 0")
        _check("COORD_MAX_QUEUE_TIME", self.max_queue_time > 0, self.max_queue_time, "a number > 0")
        _check("COORD_FLEET_MAX_QUEUE", self.fleet_max_queue is None or self.fleet_max_queue >= 0,
               self.fleet_max_queue, "an integer >= 0, or unset")
        _check("COORD_HEARTBEAT_INTERVAL", self.heartbeat_interval > 0, self.heartbeat_interval,
               "a number > 0")
        _check("COORD_INSTANCE_TTL", self.instance_ttl > self.heartbeat_interval, self.instance_ttl,
               "a number of seconds greater than COORD_HEARTBEAT_INTERVAL")
        _check("COORD_TIMEOUT_MULTIPLIER", self.timeout_multiplier > 0, self.timeout_multiplier,
               "a number > 0")
        _check("COORD_DRAIN_GRACE", self.drain_grace >= 0, self.drain_grace, "a number >= 0")
        _check("COORD_DRAIN_SPREAD", self.drain_spread is None
               or 0 <= self.drain_spread <= self.drain_grace, self.drain_spread,
               "a number of seconds from 0 to COORD_DRAIN_GRACE")
        _check("COORD_REJECT", self.reject in ("http", "close"), self.reject, "http or close")
        _check("COORD_LOG_FORMAT", self.log_format in ("text", "json"), self.log_format,
               "text or json")
        _check("COORD_ROLE", self.role in ROLES, self.role, "owner or follower")
        _check("COORD_MAX_RETRY_AFTER", 1 <= self.max_retry_after <= 86400,
               self.max_retry_after, "an integer from 1 to 86400")
        _check("COORD_SLOWSTART", 0 <= self.slowstart <= 3600, self.slowstart,
               "a number of seconds from 0 (off) to 3600")
        _check("COORD_FLEET_ADMIT_RATE", self.fleet_admit_rate is None
               or 0 < self.fleet_admit_rate <= 1e6, self.fleet_admit_rate,
               "a number of connections per second > 0, or unset")
        _check("COORD_FLEET_ADMIT_BURST", self.fleet_admit_burst is None
               or (self.fleet_admit_rate is not None and 1 <= self.fleet_admit_burst <= 1e6),
               self.fleet_admit_burst, "a number >= 1 (with COORD_FLEET_ADMIT_RATE), or unset")
        _check("COORD_MAX_CONNECTION_AGE", self.max_connection_age is None
               or 10 <= self.max_connection_age <= 7 * 86400, self.max_connection_age,
               "a number of seconds from 10 to 604800, or unset")
        _check("COORD_SIGNING_KEY", not self.signing_key
               or all(k.strip() for k in self.signing_key.split(",")), "***",
               "a key, or several separated by commas (the first signs), none empty")
        _check("COORD_REDIS_MODE", self.redis_mode in REDIS_MODES, self.redis_mode,
               "auto, standalone or cluster (Sentinel: a redis+sentinel:// URL)")
        _check_redis_url(self.redis_url)

    # -- derived values -------------------------------------------------------------

    def wait_budget(self, phase: str | None) -> float:
        """How long a connection arriving in an earlier phase may be held."""
        budget = WAIT_BUDGETS[self.environment]
        if self.cloud_run and phase == self.ready_phase:
            budget = max(budget, CLOUD_RUN_READY_PHASE_BUDGET)
        return min(budget * self.timeout_multiplier, self.max_queue_time)

    @property
    def admit_burst(self) -> float:
        """The fleet admission bucket's size: ``COORD_FLEET_ADMIT_BURST``, else a second's
        worth of the rate (at least 1)."""
        if self.fleet_admit_burst is not None:
            return self.fleet_admit_burst
        return max(1.0, self.fleet_admit_rate or 1.0)

    @property
    def drain_spread_seconds(self) -> float:
        """Over how many seconds at the end of the grace open connections are closed."""
        return self.drain_grace / 2 if self.drain_spread is None else self.drain_spread

    @property
    def keyring(self) -> Keyring | None:
        """The signing keys, bound to the namespace; None: running unsigned."""
        return Keyring.of(self.signing_key, self.namespace)

    @property
    def redis_url_redacted(self) -> str:
        return redact_url(self.redis_url)

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read ``COORD_*`` from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        reader = _Reader(env)
        kwargs: dict[str, object] = {}
        reader.put(kwargs, "redis_url", "COORD_REDIS_URL", str)
        reader.put(kwargs, "redis_mode", "COORD_REDIS_MODE", str.lower)
        reader.put(kwargs, "namespace", "COORD_NAMESPACE", str)
        reader.put(kwargs, "instance_id", "COORD_INSTANCE_ID", str)
        cloud_run = bool(env.get("K_SERVICE"))
        kwargs["cloud_run"] = cloud_run
        if not reader.put(kwargs, "environment", "COORD_ENVIRONMENT", str.lower) and cloud_run:
            kwargs["environment"] = "production"
        reader.put(kwargs, "phases", "COORD_PHASES", _phase_list)
        reader.put(kwargs, "ready_phase", "COORD_READY_PHASE", str)
        reader.put(kwargs, "near_ready_phases", "COORD_NEAR_READY_PHASES", int)
        reader.put(kwargs, "max_queue", "COORD_MAX_QUEUE", int)
        reader.put(kwargs, "max_queue_time", "COORD_MAX_QUEUE_TIME", _number)
        reader.put(kwargs, "fleet_max_queue", "COORD_FLEET_MAX_QUEUE", int)
        reader.put(kwargs, "heartbeat_interval", "COORD_HEARTBEAT_INTERVAL", _number)
        reader.put(kwargs, "instance_ttl", "COORD_INSTANCE_TTL", _number)
        reader.put(kwargs, "timeout_multiplier", "COORD_TIMEOUT_MULTIPLIER", _number)
        reader.put(kwargs, "drain_grace", "COORD_DRAIN_GRACE", _number)
        reader.put(kwargs, "drain_spread", "COORD_DRAIN_SPREAD", _number)
        reader.put(kwargs, "reject", "COORD_REJECT", str.lower)
        reader.put(kwargs, "gate", "COORD_GATE", _on_off)
        reader.put(kwargs, "signing_key", "COORD_SIGNING_KEY", str)
        if not reader.put(kwargs, "log_format", "COORD_LOG_FORMAT", str.lower):
            kwargs["log_format"] = "json" if cloud_run else "text"
        reader.put(kwargs, "role", "COORD_ROLE", str.lower)
        reader.put(kwargs, "max_retry_after", "COORD_MAX_RETRY_AFTER", int)
        reader.put(kwargs, "slowstart", "COORD_SLOWSTART", _number)
        reader.put(kwargs, "fleet_admit_rate", "COORD_FLEET_ADMIT_RATE", _number)
        reader.put(kwargs, "fleet_admit_burst", "COORD_FLEET_ADMIT_BURST", _number)
        reader.put(kwargs, "max_connection_age", "COORD_MAX_CONNECTION_AGE", _number)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"Settings has no field {', '.join(map(repr, unknown))}")
        if isinstance(overrides.get("phases"), list | tuple):  # a list is fine too
            overrides["phases"] = tuple(overrides["phases"])  # type: ignore[arg-type]
        kwargs.update(overrides)
        return cls(**kwargs)  # type: ignore[arg-type]  # checked in __post_init__


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def put(self, kwargs: dict[str, object], attr: str, var: str,
            parse: Callable[[str], T]) -> bool:
        raw = self.env.get(var)
        if raw is None or raw.strip() == "":
            return False
        try:
            kwargs[attr] = parse(raw.strip())
        except ValueError as exc:
            raise ConfigError(var, raw, str(exc) or "invalid value") from None
        return True


def _check(var: str, ok: bool, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(var, value, f"expected {expected}")


def _number(raw: str) -> float:
    value = float(raw)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    return value


def _on_off(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("on", "true", "1", "yes"):
        return True
    if lowered in ("off", "false", "0", "no"):
        return False
    raise ValueError("expected on or off")


def _phase_list(raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def _check_redis_url(url: str) -> None:
    if url.partition("://")[0].lower() in SENTINEL_SCHEMES:
        try:
            parse_sentinel_url(url)
        except ValueError as exc:
            problem = str(exc) if "@" not in url else "malformed URL"
            raise ConfigError("COORD_REDIS_URL", redact_url(url), problem) from None
        return
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:  # its text may quote part of a password
        raise ConfigError("COORD_REDIS_URL", redact_url(url),
                          "malformed URL: expected redis://[user:password@]host[:port][/db]"
                          " (escape special characters in the password)") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError("COORD_REDIS_URL", redact_url(url), "expected a redis://, rediss://,"
                          " unix:// or redis+sentinel:// URL")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError("COORD_REDIS_URL", redact_url(url), "expected a host name")
    try:  # what redis-py itself will make of it, query options included (no I/O)
        ConnectionPool.from_url(url).make_connection()
    except (ValueError, TypeError, RedisError) as exc:
        problem = str(exc) if parts.password is None or parts.password not in str(exc) \
            else "invalid URL"
        raise ConfigError("COORD_REDIS_URL", redact_url(url), problem) from None
    db = parts.path.lstrip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ConfigError("COORD_REDIS_URL", redact_url(url), "expected a database number")


def redact_url(url: str) -> str:
    """The URL with its password replaced, for logs and errors.

    Works on the text, not on a parse, so that a password with an unescaped '/', '#' or
    '@' (which breaks the parse) is hidden too: all from the user's ':' to the last '@'.
    A ``password=`` query option (redis-py accepts one) is hidden as well.
    """
    url = _QUERY_PASSWORD.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not (sep and at and colon):
        return url
    return f"{scheme}://{user}:***@{host}"


_QUERY_PASSWORD = re.compile(r"([?&](?:sentinel_)?password=)[^&#]*", re.IGNORECASE)
