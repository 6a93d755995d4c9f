"""Writing a rejection: HTTP 503 + ``Retry-After`` where the server offers a denial
response (and always to an HTTP request: an engine.io open by long-polling), else accept
and close with 1013 (1012 while draining)."""

from __future__ import annotations

import contextlib
import json

from coordinator._asgi import Receive, Scope, Send
from coordinator.contract.rejection import (
    CLOSE_SERVICE_RESTART,
    CLOSE_TRY_AGAIN_LATER,
    MAX_HINT,
    PRIVATE_CLOSE,
    Reason,
    reason_payload,
    retry_hint,
)
from coordinator.logs import handshake_noise


async def reject(scope: Scope, receive: Receive, send: Send, reason: str, retry_after: int,
                 mode: str = "http") -> None:
    """Refuse a handshake: HTTP 503 + Retry-After where the server offers a denial
    response, else accept and close with 1013 (1012 while draining). An HTTP request (an
    engine.io open by long-polling) gets the 503 whatever ``mode`` says: a polling client
    reads its status (and retries it, as an engine.io client does any failed open)."""
    retry_after = retry_hint(retry_after, cap=MAX_HINT)
    payload = reason_payload(reason, retry_after)
    if scope["type"] == "http":
        with contextlib.suppress(OSError):
            await respond(send, payload, "http.response", body=False)
        return
    message = await receive()  # websocket.connect (or disconnect: nothing to answer)
    if message["type"] != "websocket.connect":
        return
    try:
        if mode == "http" and "websocket.http.response" in scope.get("extensions", {}):
            await deny(send, payload)
            return
        code = CLOSE_SERVICE_RESTART if reason == Reason.DRAINING else CLOSE_TRY_AGAIN_LATER
        await send({"type": "websocket.accept"})
        await close(send, code, payload)
    except OSError:  # the client is already gone; nothing left to tell it
        pass


async def close(send: Send, code: int, reason: str) -> None:
    """Close with ``code`` (1012, 1013) and ``reason``; where the server refuses that code
    (daphne raises: autobahn sends 1000 and 3000-4999 only), with its private-use twin
    (4012, 4013), never letting the server turn the refusal into 1011."""
    try:
        await send({"type": "websocket.close", "code": code, "reason": reason})
    except OSError:
        raise
    except Exception:
        if code not in PRIVATE_CLOSE:
            raise
        await send({"type": "websocket.close", "code": PRIVATE_CLOSE[code], "reason": reason})


async def deny(send: Send, payload: str) -> None:
    """HTTP 503 with ``Retry-After`` and the rejection JSON (``payload``) as its body, as a
    WebSocket handshake's denial response."""
    await respond(send, payload, "websocket.http.response")
    handshake_noise.expect()


async def respond(send: Send, payload: str, kind: str, body: bool = True) -> None:
    """HTTP 503 with ``Retry-After`` and the rejection JSON (``payload``) as its body;
    ``kind``: ``http.response`` or ``websocket.http.response`` (a denial).

    ``body=False``: no body (``Content-Length: 0``), for an engine.io polling open.
    python-engineio's client (4.15) closes its HTTP session before it reads a refused
    open's body: a body that arrives after the headers then raises ``RuntimeError``
    ("Connection closed."), which escapes its reconnection loop, where an empty one is a
    ``ConnectionError`` it retries (measured: tests/e2e/test_socketio.py)."""
    retry_after = json.loads(payload)["retry_after"]
    content = payload.encode() if body else b""
    await send({"type": f"{kind}.start", "status": 503, "headers": [
        (b"content-type", b"application/json"),
        (b"retry-after", str(retry_after).encode()),
        (b"content-length", str(len(content)).encode()),
    ]})
    await send({"type": f"{kind}.body", "body": content})
