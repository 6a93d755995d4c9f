"""The backend's own variables (``BACKEND_*``, ``HOST``, ``PORT``), validated like COORD_*."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from coordinator.exceptions import ConfigError
from coordinator.settings import Settings

DEFAULT_DURATIONS = {"init": 0.05, "dependencies": 0.2, "database": 0.3, "cache": 0.2,
                     "services": 5.0, "websocket": 0.1, "finalize": 0.05}
log = logging.getLogger("backend")
WS_IMPLEMENTATIONS = ("auto", "websockets", "websockets-sansio", "wsproto")
# uvicorn's legacy `websockets` implementation drops a handshake that is not answered
# within websockets' open_timeout (10 s) with no HTTP response at all; holds are capped
# below it so that a held client gets a clean 503 instead (docs/guide.md: Handshake hold limits).
LEGACY_WS_HOLD_CAP = 9.0


@dataclass(frozen=True)
class BackendConfig:
    coord: Settings
    durations: dict[str, float] = field(default_factory=dict)
    fail_phase: str | None = None
    host: str = "0.0.0.0"
    port: int = 8000
    ws: str = "auto"
    ops_routes: bool = True
    limit_concurrency: int = 4000  # uvicorn answers 503 beyond this many connections
    keepalive: int = 5  # seconds an idle keep-alive connection stays open
    ws_max_size: int = 65536  # bytes of one WebSocket message (uvicorn's default: 16 MiB)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BackendConfig:
        env = os.environ if env is None else env
        coord = Settings.from_env(env)
        durations = {p: DEFAULT_DURATIONS.get(p, 0.1) for p in coord.phases}
        durations.update(parse_durations(env.get("BACKEND_PHASE_DURATIONS", ""), coord.phases))
        fail_phase = env.get("BACKEND_FAIL_PHASE") or None
        if fail_phase is not None and fail_phase not in coord.phases:
            raise ConfigError("BACKEND_FAIL_PHASE", fail_phase,
                              "expected one of the phases: " + ", ".join(coord.phases))
        try:
            port = int(env.get("PORT", "8000"))
            if not 0 < port < 65536:
                raise ValueError
        except ValueError:
            raise ConfigError("PORT", env.get("PORT"), "expected a TCP port number") from None
        ws = env.get("BACKEND_WS", "auto")
        if ws not in WS_IMPLEMENTATIONS:
            raise ConfigError("BACKEND_WS", ws, "expected one of " + ", ".join(WS_IMPLEMENTATIONS))
        if ws == "websockets" and coord.max_queue_time > LEGACY_WS_HOLD_CAP:
            log.warning("BACKEND_WS=websockets drops handshakes held past 10 s: capping "
                        "COORD_MAX_QUEUE_TIME at %.0f s", LEGACY_WS_HOLD_CAP)
            coord = replace(coord, max_queue_time=LEGACY_WS_HOLD_CAP)
        raw_ops = env.get("BACKEND_OPS_ROUTES", "on").strip().lower()
        if raw_ops not in ("on", "off"):
            raise ConfigError("BACKEND_OPS_ROUTES", raw_ops, "expected on or off")
        limits = {name: _bounded_int(env, var, default, low, high)
                  for name, var, default, low, high in UVICORN_LIMITS}
        return cls(coord, durations, fail_phase, env.get("HOST", "0.0.0.0"), port, ws,
                   raw_ops == "on", **limits)


# What the launcher sets on uvicorn (docs/security.md): field, variable, default, range.
UVICORN_LIMITS = (("limit_concurrency", "BACKEND_LIMIT_CONCURRENCY", 4000, 1, 1_000_000),
                  ("keepalive", "BACKEND_KEEPALIVE", 5, 1, 3600),
                  ("ws_max_size", "BACKEND_WS_MAX_SIZE", 65536, 1024, 16 << 20))


def _bounded_int(env: Mapping[str, str], var: str, default: int, low: int, high: int) -> int:
    raw = env.get(var, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ConfigError(var, raw, f"expected an integer from {low} to {high}")
    return int(raw)


def parse_durations(raw: str, phases: tuple[str, ...]) -> dict[str, float]:
    """``init=0.05,services=5`` -> {"init": 0.05, "services": 5.0}; unknown names fail."""
    out: dict[str, float] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in phases:
            raise ConfigError("BACKEND_PHASE_DURATIONS", raw,
                              f"{item!r}: expected phase=seconds with phase one of "
                              + ", ".join(phases))
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds < 3600:
            raise ConfigError("BACKEND_PHASE_DURATIONS", raw,
                              f"{item!r}: expected 0 <= seconds < 3600")
        out[name] = seconds
    return out
