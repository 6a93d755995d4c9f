"""Every ``COORD_*`` variable, read once into one validated, immutable object.

:data:`VARIABLES` is the one table of them: each variable's field, parser, check and
meaning. The loader (:meth:`Settings.from_env`), the validation
(``Settings.__post_init__``) and docs/configuration.md's table
(:func:`configuration_table`) all come from it. A bad value raises :class:`ConfigError`
naming the variable, so a process stops at start-up with a message an operator can act
on instead of misbehaving later.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import re
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import ConnectionPool
from redis.exceptions import RedisError

from coordinator._redis.topology import SENTINEL_SCHEMES, parse_sentinel_url
from coordinator.contract.keys import ID_PATTERN, NAME_PATTERN
from coordinator.contract.record import MAX_TTL
from coordinator.contract.signing import Keyring
from coordinator.exceptions import ConfigError, UsageError
from coordinator.fleet.leases import LONGEST_HOLD

DEFAULT_PHASES = ("init", "dependencies", "database", "cache", "services", "websocket", "finalize")


class Role(enum.StrEnum):
    """COORD_ROLE."""

    OWNER = "owner"  # runs the startup sequence, writes and publishes the instance's record
    FOLLOWER = "follower"  # gates for an instance whose startup runs in another process


class RedisMode(enum.StrEnum):
    """COORD_REDIS_MODE (a redis+sentinel:// URL says Sentinel)."""

    AUTO = "auto"  # ask the server (HELLO; a MOVED reply)
    STANDALONE = "standalone"
    CLUSTER = "cluster"


class Environment(enum.StrEnum):
    """COORD_ENVIRONMENT: picks the wait budget."""

    LOCAL = "local"
    TEST = "test"
    DEVELOPMENT = "development"
    STAGING = "staging"
    PRODUCTION = "production"


ENVIRONMENTS = tuple(e.value for e in Environment)
# Base wait budget (seconds) for a connection that arrives in an earlier phase.
WAIT_BUDGETS = {"local": 1.0, "test": 1.0, "development": 3.0, "staging": 3.0, "production": 5.0}
CLOUD_RUN_READY_PHASE_BUDGET = 8.0
MIN_TOKEN = 16  # characters of COORD_DRAIN_TOKEN: not a word anyone guesses

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

    Build it with :meth:`from_env` (the ``COORD_*`` variables: :data:`VARIABLES`) or
    directly with keyword arguments, as the tests do. Every field is checked in
    ``__post_init__``: a bad value raises :class:`ConfigError` naming the variable, so a
    misconfigured process stops at start-up instead of misbehaving under load. Frozen,
    and its ``repr`` leaves out the Redis URL (it may carry a password) and the signing
    key.
    """

    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)  # has a password
    redis_mode: str = RedisMode.AUTO.value
    namespace: str = "coord"
    instance_id: str = field(default_factory=_default_instance_id)
    environment: str = Environment.LOCAL.value
    cloud_run: bool = False  # K_SERVICE is set: not a COORD_* variable
    phases: tuple[str, ...] = DEFAULT_PHASES
    ready_phase: str = "services"
    near_ready_phases: int = 1
    max_queue: int = 50
    max_queue_per_client: int = 0
    max_queue_time: float = 30.0
    fleet_max_queue: int | None = None
    heartbeat_interval: float = 2.0
    instance_ttl: float = 10.0
    timeout_multiplier: float = 1.0
    drain_grace: float = 5.0
    drain_spread: float | None = None  # None: half of drain_grace
    slowstart: float = 0.0  # seconds; 0: off
    fleet_admit_rate: float | None = None  # new connections per second, fleet-wide
    fleet_admit_burst: float | None = None  # None: one second's worth of the rate
    max_connection_age: float | None = None  # seconds; None: off
    max_retry_after: int = 30
    reject: str = "http"
    gate: bool = True
    signing_key: str | None = field(default=None, repr=False)
    drain_token: str | None = field(default=None, repr=False)  # the drain endpoint's token
    log_format: str = "text"
    role: str = Role.OWNER.value

    def __post_init__(self) -> None:
        for var in VARIABLES:
            if var.check is not None and not var.check(self):
                value = getattr(self, var.field)
                expected = var.expected if isinstance(var.expected, str) else var.expected(self)
                raise ConfigError(var.name, var.shown(value) if var.shown else value,
                                  f"expected {expected}")
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
        """Read ``COORD_*`` from ``env`` (default: the process environment).

        Where a variable is unset, the field keeps its default, except on Cloud Run
        (``K_SERVICE`` set): ``COORD_ENVIRONMENT`` is then ``production`` and
        ``COORD_LOG_FORMAT`` ``json``.
        """
        env = os.environ if env is None else env
        cloud_run = bool(env.get("K_SERVICE"))
        kwargs: dict[str, object] = {"cloud_run": cloud_run}
        if cloud_run:
            kwargs.update(environment=Environment.PRODUCTION.value, log_format="json")
        for var in VARIABLES:
            raw = env.get(var.name)
            if raw is None or raw.strip() == "":
                continue
            try:
                kwargs[var.field] = var.parse(raw.strip())
            except ValueError as exc:
                raise ConfigError(var.name, raw, str(exc) or "invalid value") from None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UsageError(f"Settings has no field {', '.join(map(repr, unknown))}")
        if isinstance(overrides.get("phases"), list | tuple):  # a list is fine too
            overrides["phases"] = tuple(overrides["phases"])  # type: ignore[arg-type]
        kwargs.update(overrides)
        return cls(**kwargs)  # type: ignore[arg-type]  # checked in __post_init__


@dataclass(frozen=True)
class Variable:
    """One ``COORD_*`` variable: the field it sets, how its text is read, what a valid
    value is (``check`` on the whole settings, ``expected`` saying it in words), and
    what it means and defaults to, for the documentation."""

    name: str
    field: str
    parse: Callable[[str], Any]
    default: str  # as the documentation states it
    meaning: str
    check: Callable[[Settings], bool] | None = None
    expected: str | Callable[[Settings], str] = ""  # a function: it depends on other fields
    shown: Callable[[Any], object] | None = None  # the value as an error shows it


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


def _one_of(kind: type[enum.StrEnum]) -> Callable[[Settings], bool]:
    name = {Role: "role", RedisMode: "redis_mode", Environment: "environment"}[kind]
    return lambda s: getattr(s, name) in {k.value for k in kind}


def _names(values: tuple[str, ...]) -> bool:
    return (len(values) > 0 and len(set(values)) == len(values)
            and all(NAME_PATTERN.fullmatch(p) for p in values))


_ENVIRONMENT_DEFAULT = "`local` (`production` when `K_SERVICE` is set)"

# The table: in the order the documentation lists them (and the checks run).
VARIABLES: tuple[Variable, ...] = (
    Variable("COORD_REDIS_URL", "redis_url", str, "`redis://127.0.0.1:6379/0`",
             "`redis://`, `rediss://` or `unix://`, with `user:password@` for ACLs; the "
             "password is never logged. A cluster: any node's URL; Sentinel: "
             "`redis+sentinel://host:26379/<service>` "
             "([Redis deployments](deploy.md#redis-deployments))"),
    Variable("COORD_REDIS_MODE", "redis_mode", str.lower, "`auto`",
             "`auto` (ask the server: `HELLO`), `standalone` or `cluster`; a "
             "`redis+sentinel://` URL is Sentinel",
             _one_of(RedisMode), "auto, standalone or cluster (Sentinel: a redis+sentinel:// URL)"),
    Variable("COORD_NAMESPACE", "namespace", str, "`coord`", "prefix of every key and channel",
             lambda s: bool(NAME_PATTERN.fullmatch(s.namespace)),
             "1-64 characters of letters, digits, '_', '.', '-'"),
    Variable("COORD_INSTANCE_ID", "instance_id", str, "host-pid-random",
             "this instance's id (letters, digits, `_.-`)",
             lambda s: bool(ID_PATTERN.fullmatch(s.instance_id)),
             "1-128 characters of letters, digits, '_', '.', '-'"),
    Variable("COORD_ENVIRONMENT", "environment", str.lower, _ENVIRONMENT_DEFAULT,
             "`local`, `test`, `development`, `staging`, `production`: picks the wait budget",
             _one_of(Environment), "one of " + ", ".join(ENVIRONMENTS)),
    Variable("COORD_PHASES", "phases", _phase_list, "`" + ",".join(DEFAULT_PHASES) + "`",
             "the startup phases, in order", lambda s: _names(s.phases),
             "a comma-separated list of distinct phase names", shown=",".join),
    Variable("COORD_READY_PHASE", "ready_phase", str, "`services`",
             "the phase whose completion opens admission",
             lambda s: s.ready_phase in s.phases,
             lambda s: "one of the phases: " + ", ".join(s.phases)),
    Variable("COORD_NEAR_READY_PHASES", "near_ready_phases", int, "`1`",
             "phases before the ready phase that still hold connections",
             lambda s: s.near_ready_phases >= 0, "an integer >= 0"),
    Variable("COORD_MAX_QUEUE", "max_queue", int, "`50`", "local cap on held handshakes",
             lambda s: s.max_queue >= 0, "an integer >= 0"),
    Variable("COORD_MAX_QUEUE_PER_CLIENT", "max_queue_per_client", int, "`0` (off)",
             "held handshakes one client address may have at once (the server's "
             "`scope[\"client\"]`: behind a proxy, only with its forwarded address)",
             lambda s: s.max_queue_per_client >= 0, "an integer >= 0"),
    Variable("COORD_MAX_QUEUE_TIME", "max_queue_time", _number, "`30`",
             "longest hold, seconds (at most 3600)",
             lambda s: 0 < s.max_queue_time <= LONGEST_HOLD, "a number of seconds from 0 to 3600"),
    Variable("COORD_FLEET_MAX_QUEUE", "fleet_max_queue", int, "unset",
             "fleet-wide cap on held handshakes (leases in Redis)",
             lambda s: s.fleet_max_queue is None or s.fleet_max_queue >= 0,
             "an integer >= 0, or unset"),
    Variable("COORD_HEARTBEAT_INTERVAL", "heartbeat_interval", _number, "`2`",
             "seconds between heartbeats", lambda s: s.heartbeat_interval > 0, "a number > 0"),
    Variable("COORD_INSTANCE_TTL", "instance_ttl", _number, "`10`",
             "seconds an instance record lives without a heartbeat (at most 3600)",
             lambda s: s.heartbeat_interval < s.instance_ttl <= MAX_TTL,
             "a number of seconds greater than COORD_HEARTBEAT_INTERVAL, at most 3600"),
    Variable("COORD_TIMEOUT_MULTIPLIER", "timeout_multiplier", _number, "`1.0`",
             "scales the wait budget", lambda s: s.timeout_multiplier > 0, "a number > 0"),
    Variable("COORD_DRAIN_GRACE", "drain_grace", _number, "`5`",
             "seconds a draining instance keeps listening (and turning new arrivals away "
             "with 503) after SIGTERM", lambda s: s.drain_grace >= 0, "a number >= 0"),
    Variable("COORD_DRAIN_SPREAD", "drain_spread", _number, "half the grace",
             "over how many seconds at the end of the grace open connections are closed "
             "with 1012, evenly; `0`: all at once",
             lambda s: s.drain_spread is None or 0 <= s.drain_spread <= s.drain_grace,
             "a number of seconds from 0 to COORD_DRAIN_GRACE"),
    Variable("COORD_SLOWSTART", "slowstart", _number, "`0` (off)",
             "seconds of slow start after an instance becomes ready: admissions start at "
             "`COORD_MAX_QUEUE / COORD_SLOWSTART` per second and double every tenth of it; "
             "the excess is held", lambda s: 0 <= s.slowstart <= 3600,
             "a number of seconds from 0 (off) to 3600"),
    Variable("COORD_FLEET_ADMIT_RATE", "fleet_admit_rate", _number, "unset",
             "new connections per second across the fleet (a token bucket in Redis); the "
             "excess is held, then admitted at the rate",
             lambda s: s.fleet_admit_rate is None or 0 < s.fleet_admit_rate <= 1e6,
             "a number of connections per second > 0, or unset"),
    Variable("COORD_FLEET_ADMIT_BURST", "fleet_admit_burst", _number, "one second of the rate",
             "the bucket's size: how many may be admitted at once after a quiet spell",
             lambda s: s.fleet_admit_burst is None or (s.fleet_admit_rate is not None
                                                       and 1 <= s.fleet_admit_burst <= 1e6),
             "a number >= 1 (with COORD_FLEET_ADMIT_RATE), or unset"),
    Variable("COORD_MAX_CONNECTION_AGE", "max_connection_age", _number, "unset",
             "seconds after which an open connection is closed with 1012 and a retry hint, "
             "at a moment of its own in the last tenth of it (10 to 604800)",
             lambda s: s.max_connection_age is None or 10 <= s.max_connection_age <= 7 * 86400,
             "a number of seconds from 10 to 604800, or unset"),
    Variable("COORD_MAX_RETRY_AFTER", "max_retry_after", int, "`30`",
             "the longest retry hint a rejection gives, seconds (1 to 86400), whatever the "
             "statistics in Redis say", lambda s: 1 <= s.max_retry_after <= 86400,
             "an integer from 1 to 86400"),
    Variable("COORD_REJECT", "reject", str.lower, "`http`",
             "`http` (503 + Retry-After) or `close` (accept, then 1013/1012)",
             lambda s: s.reject in ("http", "close"), "http or close"),
    Variable("COORD_GATE", "gate", _on_off, "`on`",
             "`off` disables the gate (to show the failure it prevents)"),
    Variable("COORD_SIGNING_KEY", "signing_key", str, "unset",
             "HMAC-SHA256 key, or several comma-separated (the first signs, all verify: "
             "rotation): events and the instance hash are signed, unsigned or forged ones "
             "ignored",
             lambda s: not s.signing_key or all(k.strip() for k in s.signing_key.split(",")),
             "a key, or several separated by commas (the first signs), none empty",
             shown=lambda _key: "***"),
    Variable("COORD_DRAIN_TOKEN", "drain_token", str, "unset (endpoint off)",
             "the bearer token of the drain endpoint (`POST /drain`, "
             "[Drain](guide.md#drain)): a `preStop` hook or an operator drains the instance "
             "with it; unset, the endpoint answers 404",
             lambda s: s.drain_token is None or (len(s.drain_token) >= MIN_TOKEN
                                                 and s.drain_token.isascii()
                                                 and s.drain_token.isprintable()
                                                 and " " not in s.drain_token),
             f"at least {MIN_TOKEN} printable ASCII characters, no spaces",
             shown=lambda _token: "***"),
    Variable("COORD_LOG_FORMAT", "log_format", str.lower, "`text` (`json` on Cloud Run)",
             "`json`: one object per line with `severity` and `instance`, for Cloud Logging",
             lambda s: s.log_format in ("text", "json"), "text or json"),
    Variable("COORD_ROLE", "role", str.lower, "`owner`",
             "`owner`: this process runs the startup phases and publishes them; `follower`: "
             "it only gates, for an instance whose startup runs in another process",
             _one_of(Role), "owner or follower"),
)


def configuration_table() -> str:
    """docs/configuration.md's table, from :data:`VARIABLES`."""
    rows = ["| variable | `Settings` field | default | meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| `{v.name}` | `{v.field}` | {v.default} | {v.meaning} |" for v in VARIABLES]
    return "\n".join(rows) + "\n"


def _check(var: str, ok: bool, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(var, value, f"expected {expected}")


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
        raise ConfigError("COORD_REDIS_URL", redact_url(url), scrub(str(exc), url)) from None
    db = parts.path.lstrip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ConfigError("COORD_REDIS_URL", redact_url(url), "expected a database number")


def scrub(text: str, url: str) -> str:
    """``text`` (an error's message) with every password ``url`` carries replaced: the
    user's, and ``password=``/``sentinel_password=`` query options. With
    :func:`redact_url`, the only two places that hide a password."""
    secrets_ = list(_QUERY_SECRET.findall(url))
    with contextlib.suppress(ValueError):
        secrets_.append(urlsplit(url).password or "")
    secrets_ += [unquote(s) for s in secrets_]  # redis-py uses them decoded
    for secret in sorted(filter(None, secrets_), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


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
_QUERY_SECRET = re.compile(r"[?&](?:sentinel_)?password=([^&#]*)", re.IGNORECASE)
