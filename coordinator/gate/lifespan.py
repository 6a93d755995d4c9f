"""The app's lifespan as the gate passes it through: once the app has started, SIGTERM
drains the instance before the server shuts down (:mod:`coordinator.instance.drain`) and
the server's log line for each denial is dropped (``logs.quiet_handshake_noise``); when
the lifespan ends, the server's own signal handling is back."""

from __future__ import annotations

from coordinator._asgi import ASGIApp, Message, Receive, Scope, Send
from coordinator.instance.coordinator import Coordinator
from coordinator.instance.drain import DRAINS
from coordinator.logs import quiet_handshake_noise


async def run_lifespan(app: ASGIApp, coord: Coordinator, scope: Scope, receive: Receive,
                       send: Send) -> None:
    async def sent(message: Message) -> None:
        if message["type"] == "lifespan.startup.complete":
            quiet_handshake_noise()
            DRAINS.attach(coord)
        await send(message)

    async def received() -> Message:
        message = await receive()
        if message["type"] == "lifespan.shutdown":
            DRAINS.detach(coord)
        return message

    await app(scope, received, sent)
