"""Writing a rejection: HTTP 503 + ``Retry-After`` where the server offers a denial
response, else accept and close with 1013 (1012 while draining)."""

from __future__ import annotations

import json

from coordinator._asgi import Receive, Scope, Send
from coordinator.contract.rejection import (
    CLOSE_SERVICE_RESTART,
    CLOSE_TRY_AGAIN_LATER,
    MAX_HINT,
    Reason,
    reason_payload,
    retry_hint,
)
from coordinator.logs import handshake_noise


async def reject(scope: Scope, receive: Receive, send: Send, reason: str, retry_after: int,
                 mode: str = "http") -> None:
    """Refuse a handshake: HTTP 503 + Retry-After where the server offers a denial
    response, else accept and close with 1013 (1012 while draining)."""
    retry_after = retry_hint(retry_after, cap=MAX_HINT)
    payload = reason_payload(reason, retry_after)
    message = await receive()  # websocket.connect (or disconnect: nothing to answer)
    if message["type"] != "websocket.connect":
        return
    try:
        if mode == "http" and "websocket.http.response" in scope.get("extensions", {}):
            await deny(send, payload)
            return
        code = CLOSE_SERVICE_RESTART if reason == Reason.DRAINING else CLOSE_TRY_AGAIN_LATER
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": code, "reason": payload})
    except OSError:  # the client is already gone; nothing left to tell it
        pass


async def deny(send: Send, payload: str) -> None:
    """HTTP 503 with ``Retry-After`` and the rejection JSON (``payload``) as its body."""
    retry_after = json.loads(payload)["retry_after"]
    body = payload.encode()
    await send({"type": "websocket.http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"),
        (b"retry-after", str(retry_after).encode()),
        (b"content-length", str(len(body)).encode()),
    ]})
    await send({"type": "websocket.http.response.body", "body": body})
    handshake_noise.expect()
