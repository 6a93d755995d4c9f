"""Settings: every COORD_* variable, the errors that name it, the wait budget profiles;
and the backend's own variables, down to `python -m backend` refusing a bad value."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys

import pytest

from backend.config import DEFAULT_DURATIONS, BackendConfig, parse_durations
from coordinator.exceptions import ConfigError
from coordinator.settings import (
    DEFAULT_PHASES,
    VARIABLES,
    Settings,
    configuration_table,
    default_id_prefix,
    generated_on,
    scrub,
)
from tests.support import ROOT

PASSWORD = "hunter2-s3cr3t"


def error_for(env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    return info.value


def test_defaults_match_the_design() -> None:
    s = Settings.from_env({})
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.namespace == "coord"
    assert s.environment == "local" and not s.cloud_run
    assert s.phases == ("init", "dependencies", "database", "cache", "services", "websocket",
                        "finalize")
    assert s.ready_phase == "services"
    assert (s.near_ready_phases, s.max_queue, s.max_queue_time) == (1, 50, 30.0)
    assert s.fleet_max_queue is None
    assert (s.heartbeat_interval, s.instance_ttl, s.timeout_multiplier) == (2.0, 10.0, 1.0)
    assert s.drain_grace == 5.0
    assert (s.reject, s.gate, s.signing_key) == ("http", True, None)
    assert s.instance_id  # derived from host, pid and a random suffix
    assert s.instance_id != Settings.from_env({}).instance_id


def test_every_variable_is_read() -> None:
    s = Settings.from_env({
        "COORD_REDIS_URL": f"rediss://app:{PASSWORD}@redis.internal:6380/3",
        "COORD_NAMESPACE": "chat-prod",
        "COORD_INSTANCE_ID": "web-1.a_b",
        "COORD_ENVIRONMENT": "Staging",
        "COORD_PHASES": " boot, db ,services,warm ",
        "COORD_READY_PHASE": "services",
        "COORD_NEAR_READY_PHASES": "2",
        "COORD_MAX_QUEUE": "7",
        "COORD_MAX_QUEUE_TIME": "12.5",
        "COORD_FLEET_MAX_QUEUE": "40",
        "COORD_HEARTBEAT_INTERVAL": "0.5",
        "COORD_INSTANCE_TTL": "3",
        "COORD_TIMEOUT_MULTIPLIER": "1.5",
        "COORD_DRAIN_GRACE": "0",
        "COORD_REJECT": "CLOSE",
        "COORD_GATE": "off",
        "COORD_SIGNING_KEY": "k3y",
        "COORD_LOG_FORMAT": "json",
    })
    assert s.redis_url == f"rediss://app:{PASSWORD}@redis.internal:6380/3"
    assert s.namespace == "chat-prod"
    assert s.instance_id == "web-1.a_b"
    assert s.environment == "staging"
    assert s.phases == ("boot", "db", "services", "warm")
    assert s.ready_phase == "services"
    assert s.near_ready_phases == 2
    assert s.max_queue == 7
    assert s.max_queue_time == 12.5
    assert s.fleet_max_queue == 40
    assert s.heartbeat_interval == 0.5
    assert s.instance_ttl == 3.0
    assert s.timeout_multiplier == 1.5
    assert s.drain_grace == 0.0
    assert s.reject == "close"
    assert s.gate is False
    assert s.signing_key == "k3y"
    assert s.log_format == "json"


@pytest.mark.parametrize(("raw", "expected"), [("on", True), ("TRUE", True), ("1", True),
                                          ("yes", True), ("off", False), ("False", False),
                                          ("0", False), ("no", False)])
def test_gate_accepts_the_usual_booleans(raw: str, expected: bool) -> None:
    assert Settings.from_env({"COORD_GATE": raw}).gate is expected


def test_blank_values_keep_the_default() -> None:
    s = Settings.from_env({"COORD_MAX_QUEUE": "  ", "COORD_FLEET_MAX_QUEUE": ""})
    assert (s.max_queue, s.fleet_max_queue) == (50, None)


@pytest.mark.parametrize(("env", "variable"), [
    ({"COORD_READY_PHASE": "warmup"}, "COORD_READY_PHASE"),
    ({"COORD_PHASES": "a,b,c"}, "COORD_READY_PHASE"),  # the default ready phase is gone
    ({"COORD_PHASES": "a,b,a", "COORD_READY_PHASE": "b"}, "COORD_PHASES"),
    ({"COORD_PHASES": "a,b c", "COORD_READY_PHASE": "a"}, "COORD_PHASES"),
    ({"COORD_PHASES": " , "}, "COORD_PHASES"),  # a list with no names
    ({"COORD_ENVIRONMENT": "prod"}, "COORD_ENVIRONMENT"),
    ({"COORD_NAMESPACE": "has space"}, "COORD_NAMESPACE"),
    ({"COORD_NAMESPACE": "a:b"}, "COORD_NAMESPACE"),
    ({"COORD_INSTANCE_ID": "x" * 129}, "COORD_INSTANCE_ID"),
    ({"COORD_NEAR_READY_PHASES": "-1"}, "COORD_NEAR_READY_PHASES"),
    ({"COORD_MAX_QUEUE": "-1"}, "COORD_MAX_QUEUE"),
    ({"COORD_MAX_QUEUE": "ten"}, "COORD_MAX_QUEUE"),
    ({"COORD_MAX_QUEUE": "2.5"}, "COORD_MAX_QUEUE"),
    ({"COORD_MAX_QUEUE_TIME": "0"}, "COORD_MAX_QUEUE_TIME"),
    ({"COORD_MAX_QUEUE_TIME": "nan"}, "COORD_MAX_QUEUE_TIME"),
    ({"COORD_MAX_QUEUE_TIME": "inf"}, "COORD_MAX_QUEUE_TIME"),
    ({"COORD_FLEET_MAX_QUEUE": "-3"}, "COORD_FLEET_MAX_QUEUE"),
    ({"COORD_HEARTBEAT_INTERVAL": "0"}, "COORD_HEARTBEAT_INTERVAL"),
    ({"COORD_HEARTBEAT_INTERVAL": "soon"}, "COORD_HEARTBEAT_INTERVAL"),
    ({"COORD_INSTANCE_TTL": "2"}, "COORD_INSTANCE_TTL"),  # == the default heartbeat
    ({"COORD_INSTANCE_TTL": "1", "COORD_HEARTBEAT_INTERVAL": "1.5"}, "COORD_INSTANCE_TTL"),
    ({"COORD_TIMEOUT_MULTIPLIER": "0"}, "COORD_TIMEOUT_MULTIPLIER"),
    ({"COORD_TIMEOUT_MULTIPLIER": "-2"}, "COORD_TIMEOUT_MULTIPLIER"),
    ({"COORD_DRAIN_GRACE": "-0.1"}, "COORD_DRAIN_GRACE"),
    ({"COORD_REJECT": "403"}, "COORD_REJECT"),
    ({"COORD_GATE": "maybe"}, "COORD_GATE"),
    ({"COORD_GATE": "2"}, "COORD_GATE"),
    ({"COORD_LOG_FORMAT": "xml"}, "COORD_LOG_FORMAT"),
    ({"COORD_REDIS_URL": "localhost:6379"}, "COORD_REDIS_URL"),
    ({"COORD_REDIS_URL": "http://127.0.0.1:6379/0"}, "COORD_REDIS_URL"),
    ({"COORD_REDIS_URL": "memcached://127.0.0.1"}, "COORD_REDIS_URL"),
    ({"COORD_REDIS_URL": "redis://:6379/0"}, "COORD_REDIS_URL"),
    ({"COORD_REDIS_URL": "redis://127.0.0.1:port/0"}, "COORD_REDIS_URL"),
    ({"COORD_REDIS_URL": "redis://127.0.0.1:70000/0"}, "COORD_REDIS_URL"),
    ({"COORD_REDIS_URL": "redis://127.0.0.1:6379/zero"}, "COORD_REDIS_URL"),
    ({"COORD_REDIS_URL": "redis://[::1/0"}, "COORD_REDIS_URL"),
])
def test_bad_values_raise_config_error_naming_the_variable(env: dict[str, str],
                                                           variable: str) -> None:
    error = error_for(env)
    assert error.variable == variable
    assert str(error).startswith(f"{variable}="), str(error)


def test_config_error_is_a_value_error_with_the_problem_stated() -> None:
    error = error_for({"COORD_MAX_QUEUE": "-1"})
    assert isinstance(error, ValueError)
    assert ">= 0" in str(error)


@pytest.mark.parametrize("url", [
    f"ftp://user:{PASSWORD}@host:6379/0",
    f"redis://user:{PASSWORD}@host:notaport/0",
    f"redis://user:{PASSWORD}@host:6379/db",
    f"redis://:{PASSWORD}@/0",
    f"redis://user:{PASSWORD}@[::1/0",
    # Unescaped '/', '#' or '@' in a password (base64 secrets have '/') break the parse;
    # the error must still not print them.
    f"redis://user:{PASSWORD}/x@host:6379/0",
    f"redis://user:{PASSWORD}#x@host:6379/0",
    f"redis://user:{PASSWORD}@x@host:bad/0",
])
def test_redis_password_never_appears_in_errors(url: str) -> None:
    error = error_for({"COORD_REDIS_URL": url})
    assert error.variable == "COORD_REDIS_URL"
    for text in (str(error), repr(error), repr(error.value), str(error.problem)):
        assert PASSWORD not in text
        assert PASSWORD[:6] not in text, text


def test_redis_password_never_appears_in_settings_repr() -> None:
    s = Settings.from_env({"COORD_REDIS_URL": f"redis://app:{PASSWORD}@redis:6379/0",
                           "COORD_SIGNING_KEY": "signing-secret"})
    assert PASSWORD not in repr(s) and PASSWORD not in str(s)
    assert "signing-secret" not in repr(s)
    assert PASSWORD not in s.redis_url_redacted
    assert s.redis_url_redacted == "redis://app:***@redis:6379/0"


@pytest.mark.parametrize(("environment", "budget"), [("local", 1.0), ("test", 1.0),
                                                ("development", 3.0), ("staging", 3.0),
                                                ("production", 5.0)])
def test_wait_budget_by_environment(environment: str, budget: float) -> None:
    s = Settings.from_env({"COORD_ENVIRONMENT": environment})
    assert s.environment == environment
    assert s.wait_budget("database") == budget
    assert s.wait_budget("services") == budget  # off Cloud Run: no ready-phase floor


def test_cloud_run_means_production_and_at_least_eight_seconds_in_the_ready_phase() -> None:
    s = Settings.from_env({"K_SERVICE": "chat"})
    assert s.cloud_run and s.environment == "production"
    assert s.wait_budget("database") == 5.0
    assert s.wait_budget("services") >= 8.0
    custom = Settings.from_env({"K_SERVICE": "chat", "COORD_PHASES": "a,warm,b",
                                "COORD_READY_PHASE": "warm"})
    assert custom.wait_budget("warm") >= 8.0
    assert custom.wait_budget("a") == 5.0


def test_explicit_environment_wins_over_k_service() -> None:
    s = Settings.from_env({"K_SERVICE": "chat", "COORD_ENVIRONMENT": "development"})
    assert s.environment == "development"
    assert s.wait_budget("database") == 3.0


def test_wait_budget_times_the_multiplier() -> None:
    s = Settings.from_env({"COORD_ENVIRONMENT": "development", "COORD_TIMEOUT_MULTIPLIER": "2.5"})
    assert s.wait_budget("database") == 7.5
    cloud = Settings.from_env({"K_SERVICE": "x", "COORD_TIMEOUT_MULTIPLIER": "2"})
    assert cloud.wait_budget("services") >= 16.0


def test_wait_budget_never_exceeds_max_queue_time() -> None:
    s = Settings.from_env({"COORD_ENVIRONMENT": "production", "COORD_TIMEOUT_MULTIPLIER": "100",
                           "COORD_MAX_QUEUE_TIME": "30"})
    assert s.wait_budget("database") == 30.0
    cloud = Settings.from_env({"K_SERVICE": "x", "COORD_MAX_QUEUE_TIME": "6"})
    assert cloud.wait_budget("services") == 6.0  # the cap wins over Cloud Run's floor
    assert cloud.wait_budget("database") == 5.0


# -- the backend's variables ------------------------------------------------------------

def test_backend_phase_durations_override_only_the_named_phases() -> None:
    config = BackendConfig.from_env({"BACKEND_PHASE_DURATIONS": "init=0.01, services=2 ,"})
    assert config.durations["init"] == 0.01
    assert config.durations["services"] == 2.0
    assert config.durations["database"] == DEFAULT_DURATIONS["database"]
    assert set(config.durations) == set(DEFAULT_DURATIONS)
    assert parse_durations("", DEFAULT_PHASES) == {}


@pytest.mark.parametrize("raw", ["warmup=1", "services", "services=soon", "services=-1",
                                 "services=1e9", "=2"])
def test_backend_bad_phase_durations_name_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        BackendConfig.from_env({"BACKEND_PHASE_DURATIONS": raw})
    assert info.value.variable == "BACKEND_PHASE_DURATIONS"
    assert "BACKEND_PHASE_DURATIONS" in str(info.value)


def test_backend_durations_follow_custom_phases() -> None:
    env = {"COORD_PHASES": "boot,services", "BACKEND_PHASE_DURATIONS": "boot=0.3"}
    assert BackendConfig.from_env(env).durations == {"boot": 0.3, "services": 5.0}
    with pytest.raises(ConfigError, match="BACKEND_PHASE_DURATIONS"):
        BackendConfig.from_env({**env, "BACKEND_PHASE_DURATIONS": "database=1"})


@pytest.mark.parametrize(("env", "variable"), [
    ({"COORD_MAX_QUEUE": "-5"}, "COORD_MAX_QUEUE"),
    ({"COORD_REDIS_URL": f"http://u:{PASSWORD}@h/0"}, "COORD_REDIS_URL"),
    ({"BACKEND_PHASE_DURATIONS": "warmup=1"}, "BACKEND_PHASE_DURATIONS"),
])
def test_python_m_backend_refuses_a_bad_value_naming_the_variable(env: dict[str, str],
                                                                  variable: str) -> None:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("COORD_", "BACKEND_")) and k != "K_SERVICE"}
    proc = subprocess.run([sys.executable, "-m", "backend"], cwd=ROOT, capture_output=True,
                          env={**clean, "PORT": "1", **env}, timeout=60)
    stderr = proc.stderr.decode()
    assert proc.returncode != 0
    assert variable in stderr, stderr
    assert PASSWORD not in stderr and PASSWORD not in proc.stdout.decode()
    assert "Traceback" not in stderr


@pytest.mark.parametrize("url", [
    "redis://:hunter2@host/0?socket_timeout=abc",
    "redis://:hunter2@host/0?ssl_cert_reqs=bogus",
    "rediss://:hunter2@host/0?ssl_cert_reqs=bogus",
])
def test_a_redis_url_option_redis_py_would_refuse_stops_start_up_by_name(url):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"COORD_REDIS_URL": url})
    assert caught.value.variable == "COORD_REDIS_URL"
    assert "hunter2" not in str(caught.value)


def test_ops_routes_can_be_switched_off_and_nothing_else_is_accepted():
    from backend.app import create_app
    from backend.config import BackendConfig

    off = create_app(BackendConfig.from_env({"BACKEND_OPS_ROUTES": "off"}))
    paths = {getattr(route, "path", None) for route in off.routes}
    assert {"/health", "/ws"} <= paths  # /health: the library's HealthApp, mounted
    assert not paths & {"/fleet", "/metrics"}
    assert not any(str(p).startswith("/dashboard") for p in paths)
    on = create_app(BackendConfig.from_env({}))
    assert {"/fleet", "/metrics"} <= {getattr(r, "path", None) for r in on.routes}
    with pytest.raises(ConfigError) as caught:
        BackendConfig.from_env({"BACKEND_OPS_ROUTES": "maybe"})
    assert caught.value.variable == "BACKEND_OPS_ROUTES"


def test_a_generated_instance_id_is_recognised_as_this_hosts_and_no_other_id_is() -> None:
    host = socket.gethostname()
    assert generated_on(Settings.from_env({}).instance_id, host)
    assert not generated_on(f"{default_id_prefix(host)}admin", host)
    assert not generated_on(Settings.from_env({}).instance_id, host + "x")
    assert default_id_prefix("web 1/a") == "web-1-a-"


def test_a_password_given_as_a_query_option_is_redacted_too() -> None:
    s = Settings.from_env({"COORD_REDIS_URL": "redis://redis:6379/0?password=s3cret&db=1"})
    assert s.redis_url_redacted == "redis://redis:6379/0?password=***&db=1"


def test_several_signing_keys_make_one_keyring_bound_to_the_namespace() -> None:
    s = Settings.from_env({"COORD_SIGNING_KEY": "new-key, old-key", "COORD_NAMESPACE": "prod"})
    assert s.keyring is not None
    assert (s.keyring.keys, s.keyring.namespace) == ((b"new-key", b"old-key"), "prod")
    assert Settings().keyring is None


@pytest.mark.parametrize("raw", ["new-key,,old-key", "new-key, ", ",old-key"])
def test_an_empty_signing_key_in_the_list_is_an_error_that_shows_no_key(raw: str) -> None:
    error = error_for({"COORD_SIGNING_KEY": raw})
    assert error.variable == "COORD_SIGNING_KEY"
    assert "new-key" not in str(error) and "old-key" not in str(error)


def test_max_retry_after_is_an_integer_from_1_to_a_day() -> None:
    assert Settings().max_retry_after == 30
    assert Settings.from_env({"COORD_MAX_RETRY_AFTER": "7"}).max_retry_after == 7
    for raw in ("0", "86401", "1.5", "x"):
        assert error_for({"COORD_MAX_RETRY_AFTER": raw}).variable == "COORD_MAX_RETRY_AFTER"


def test_the_launcher_bounds_what_uvicorn_can_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    import backend.__main__ as launcher
    from backend.config import BackendConfig

    seen: dict[str, object] = {}

    class Captured:
        def __init__(self, config: object) -> None:
            seen["config"] = config

        def run(self) -> None:
            pass

    monkeypatch.setattr("backend.__main__.uvicorn.Server", Captured)
    monkeypatch.setattr("backend.__main__.signal.signal", lambda *_args: None)  # not pytest's
    for name in ("BACKEND_LIMIT_CONCURRENCY", "BACKEND_KEEPALIVE", "BACKEND_WS_MAX_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BACKEND_WS_MAX_SIZE", "4096")
    assert launcher.main() == 0
    config = seen["config"]
    assert (config.limit_concurrency, config.timeout_keep_alive, config.ws_max_size,  # type: ignore[attr-defined]
            config.h11_max_incomplete_event_size) == (4000, 5, 4096, 16384)  # type: ignore[attr-defined]
    for var, bad in [("BACKEND_WS_MAX_SIZE", "100"), ("BACKEND_LIMIT_CONCURRENCY", "0"),
                     ("BACKEND_KEEPALIVE", "x")]:
        with pytest.raises(ConfigError, match=var):
            BackendConfig.from_env({var: bad})


# -- one table: the loader, the checks and the documentation --------------------------

def test_the_documented_configuration_table_is_the_settings_table() -> None:
    """docs/configuration.md holds configuration_table() as it is: a variable added,
    renamed or re-described in coordinator/settings.py's VARIABLES shows up here."""
    documented = (ROOT / "docs" / "configuration.md").read_text()
    assert configuration_table() in documented, (
        "docs/configuration.md's table differs from coordinator.settings.VARIABLES; "
        "replace it with:\n" + configuration_table())


def test_every_field_but_cloud_run_has_its_variable_and_every_variable_is_read() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)} - {"cloud_run"}
    assert [v.field for v in VARIABLES] == sorted(fields, key=[v.field for v in VARIABLES].index)
    assert {v.field for v in VARIABLES} == fields
    for var in VARIABLES:  # each variable reaches its field
        sample = {"COORD_PHASES": "a,services,cache", "COORD_GATE": "off",
                  "COORD_REDIS_URL": "redis://example:6380/2", "COORD_REDIS_MODE": "cluster",
                  "COORD_ENVIRONMENT": "staging", "COORD_REJECT": "close",
                  "COORD_LOG_FORMAT": "json", "COORD_ROLE": "follower",
                  "COORD_SIGNING_KEY": "k", "COORD_NAMESPACE": "ns", "COORD_INSTANCE_ID": "i-1",
                  "COORD_READY_PHASE": "cache", "COORD_INSTANCE_TTL": "11",
                  "COORD_FLEET_ADMIT_BURST": "3", "COORD_MAX_CONNECTION_AGE": "20",
                  "COORD_DRAIN_SPREAD": "1", "COORD_HEARTBEAT_INTERVAL": "3",
                  "COORD_DRAIN_TOKEN": "t0ken-of-16-chars"}.get(var.name, "2")
        env = {var.name: sample}
        if var.name == "COORD_FLEET_ADMIT_BURST":
            env["COORD_FLEET_ADMIT_RATE"] = "5"
        read = getattr(Settings.from_env(env), var.field)
        assert read == var.parse(sample) and read != getattr(Settings(), var.field), var.name


def test_the_drain_token_is_long_enough_and_never_shown() -> None:
    token = "s3cret-drain-token-9f2c"
    settings = Settings.from_env({"COORD_DRAIN_TOKEN": token})
    assert settings.drain_token == token and token not in repr(settings)
    assert Settings().drain_token is None  # unset: the endpoint is off
    for bad in ("short", "sixteen chars ok", "x" * 15, "tökén-of-sixteen-chars"):
        caught = error_for({"COORD_DRAIN_TOKEN": bad})
        assert caught.variable == "COORD_DRAIN_TOKEN" and bad not in str(caught)


@pytest.mark.parametrize("url", [
    "redis://app:s3cr%40t@127.0.0.1:6379/0",
    "redis://127.0.0.1:6379/0?password=s3cr%40t",
    "redis+sentinel://app:s3cr%40t@127.0.0.1:26379/mymaster?sentinel_password=s3cr%40t",
])
def test_scrub_hides_every_password_a_url_carries_as_typed_and_decoded(url: str) -> None:
    message = "AUTH failed for s3cr%40t (decoded: s3cr@t)"
    assert scrub(message, url) == "AUTH failed for *** (decoded: ***)"
