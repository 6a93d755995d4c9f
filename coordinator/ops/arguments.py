"""The ``coordinator`` command's arguments, and its entry point: argparse alone.

``--help`` and a usage error are answered here, before anything that talks to Redis is
imported (redis-py alone takes half of a command's start-up); a command that runs
imports :mod:`coordinator.ops.cli` then.
"""

from __future__ import annotations

import argparse

WATCH_INTERVAL = 2.0
# Not 8080 (HAProxy's and the image's port in docker-compose and deploy/haproxy.cfg), nor
# 8000-8003 (the backend's default and the docs' instances): nothing the docs start.
DASHBOARD_PORT = 8090
DRAIN_TIMEOUT = 60.0  # a preStop hook is bounded by the pod's termination grace anyway


def main(argv: list[str] | None = None) -> int:
    """The console script: parse, then run (importing the commands only now)."""
    args = build_parser().parse_args(argv)
    from coordinator.ops.cli import run_parsed

    return run_parsed(args)


def build_parser() -> argparse.ArgumentParser:
    # The connection options are accepted before or after the command.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--redis-url", help="Redis URL (default: $COORD_REDIS_URL)")
    common.add_argument("--namespace", help="key namespace (default: $COORD_NAMESPACE)")
    parser = argparse.ArgumentParser(
        prog="coordinator", parents=[common],
        description="Read the connection coordinator's fleet from Redis.",
        epilog="exit status: 0 ok (check: ready), 1 check: not ready, 2 error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fleet_cmd = commands.add_parser("fleet", parents=[common], help="show every live instance",
                                    description="Show every live instance and the totals.")
    fleet_cmd.add_argument("--json", action="store_true",
                           help="print the fleet document (the same as the backend's /fleet)")
    fleet_cmd.add_argument("--watch", action="store_true",
                           help="redraw on every event and every --interval; Ctrl-C exits")
    fleet_cmd.add_argument("--interval", type=_positive, default=WATCH_INTERVAL,
                           help=f"--watch refresh period in seconds (default {WATCH_INTERVAL:g})")

    events_cmd = commands.add_parser("events", parents=[common], help="follow the event channel",
                                     description="Follow N:events, one line per event.")
    events_cmd.add_argument("--json", action="store_true", help="print each message as received")
    events_cmd.add_argument("--count", type=_positive_int, default=None,
                            help="exit after this many messages")

    check_cmd = commands.add_parser("check", parents=[common], help="exit 0 if ready, else 1",
                                    description="Exit 0 when the instance is ready, else 1.")
    check_cmd.add_argument("--instance", default=None,
                           help="instance id (default: $COORD_INSTANCE_ID, else this host's one "
                                "live instance with a generated id)")

    dash_cmd = commands.add_parser("dashboard", parents=[common], help="serve the live dashboard",
                                   description="Serve the fleet dashboard at "
                                   "http://HOST:PORT/dashboard/ (needs only Redis); Ctrl-C stops.")
    dash_cmd.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    dash_cmd.add_argument("--port", type=_port, default=DASHBOARD_PORT,
                          help=f"listen port (default {DASHBOARD_PORT})")

    drain_cmd = commands.add_parser(
        "drain", help="drain an instance through its drain endpoint",
        description="POST to an instance's drain endpoint with the bearer token "
        "$COORD_DRAIN_TOKEN and wait until it has drained (a Kubernetes preStop hook); "
        "exit 0 once drained.")
    drain_cmd.add_argument("--url", default=None,
                           help="the endpoint (default http://127.0.0.1:$PORT/drain, "
                                "PORT 8000 when unset)")
    drain_cmd.add_argument("--timeout", type=_positive, default=DRAIN_TIMEOUT,
                           help=f"seconds to wait for the answer (default {DRAIN_TIMEOUT:g})")
    return parser


def _positive(raw: str) -> float:
    value = float(raw)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {raw!r}")
    return value


def _port(raw: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise argparse.ArgumentTypeError(f"expected a TCP port number, got {raw!r}")
    return int(raw)


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {raw!r}")
    return value


