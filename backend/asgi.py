"""The reference service as a module-level ASGI app, for servers other than
``python -m backend``, which all take ``module:attribute``:

    uvicorn backend.asgi:app             fastapi run backend/asgi.py
    gunicorn -k uvicorn_worker.UvicornWorker backend.asgi:app
    hypercorn backend.asgi:app           granian --interface asgi backend.asgi:app

It reads its configuration (COORD_*, BACKEND_*) when imported. The gate drains it on
SIGTERM under each of them (docs/guide.md: Drain).
"""

from __future__ import annotations

from .app import create_app

app = create_app()
