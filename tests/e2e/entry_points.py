"""The reference app served through the drain's public entry points (coordinator.serve),
as a user's launcher would:

    python -m tests.e2e.entry_points uvicorn|hypercorn PORT [MAX_REQUESTS]

Nothing of the servers' is taken over; the health document's ``drain.via`` names the
entry point."""

from __future__ import annotations

import asyncio
import signal
import sys


def main(server: str, port: int, limit: int | None = None) -> int:
    from backend.asgi import app
    from coordinator.serve import DrainingServer, serve_hypercorn

    if server == "uvicorn":
        import uvicorn

        # uvicorn raises the SIGTERM it handled again once it has shut down, to the
        # handler that was there before it: this one makes that a clean exit (status 0).
        signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
        DrainingServer(uvicorn.Config(app, host="127.0.0.1", port=port,
                                      limit_max_requests=limit)).run()
        return 0
    from hypercorn.config import Config

    asyncio.run(serve_hypercorn(app, Config.from_mapping(bind=[f"127.0.0.1:{port}"])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:4])))
