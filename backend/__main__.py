"""``python -m backend``: serve the reference backend on HOST:PORT under uvicorn."""

from __future__ import annotations

import signal
import sys

import uvicorn

from coordinator.exceptions import ConfigError
from coordinator.logs import configure

from .app import create_app
from .config import BackendConfig

# After the drain, uvicorn's own shutdown waits this long for what is still running (a
# client that stopped reading its close): the grace, the drain's steps and this fit in
# Cloud Run's 10 s (tests/unit/test_cloudrun.py).
GRACEFUL_SHUTDOWN = 2


def main() -> int:
    try:
        config = BackendConfig.from_env()
    except ConfigError as exc:
        print(f"backend: configuration error: {exc}", file=sys.stderr)
        return 2
    log_config = configure(config.coord.log_format, config.coord.instance_id)
    app = create_app(config)
    # A plain uvicorn.Server: the gate drains on SIGTERM by itself (coordinator/drain.py).
    server = uvicorn.Server(uvicorn.Config(
        app, host=config.host, port=config.port, ws=config.ws, log_config=log_config,
        lifespan="on", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN, access_log=False,
        # What uvicorn can bound itself (docs/security.md); a front end must do the rest.
        limit_concurrency=config.limit_concurrency, timeout_keep_alive=config.keepalive,
        ws_max_size=config.ws_max_size, h11_max_incomplete_event_size=16 << 10,
    ))
    # uvicorn re-raises the SIGTERM it handled once its shutdown is complete, to the
    # handler that was there before it; this one makes that a clean exit (status 0).
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
