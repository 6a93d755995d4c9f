"""Logging: plain text locally, one JSON object per line where Cloud Logging reads it."""

from __future__ import annotations

import collections
import json
import logging
import sys
import time

_SEVERITY = {"DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "WARNING", "ERROR": "ERROR",
             "CRITICAL": "CRITICAL"}


class JsonFormatter(logging.Formatter):
    def __init__(self, instance_id: str) -> None:
        super().__init__()
        self.instance_id = instance_id

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "severity": _SEVERITY.get(record.levelname, "DEFAULT"),
            "message": record.getMessage(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "logger": record.name,
            "instance": self.instance_id,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _FallbackHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Shows the coordinator's records on stderr while nothing else would.

    Installed by :func:`ensure_visible` when the host application has set up no logging
    (plain ``uvicorn app:app`` configures only its own loggers, so Python would print
    warnings and drop everything else). The first record after the root logger gets a
    handler of its own (the application configured logging) removes it and the INFO
    level it set: from then on the coordinator's records follow the application's
    configuration, its levels included, and no line is printed twice.
    """

    def __init__(self, logger: logging.Logger, level_was_set: bool) -> None:
        super().__init__(sys.stderr)
        self.logger = logger
        self.level_was_set = level_was_set
        logger.addFilter(self._until_configured)

    def _until_configured(self, record: logging.LogRecord) -> bool:
        root = logging.getLogger()
        if not root.handlers:
            return True
        self.logger.removeFilter(self._until_configured)
        self.logger.removeHandler(self)
        if self.level_was_set and self.logger.level == logging.INFO:
            self.logger.setLevel(logging.NOTSET)
        return record.levelno >= root.getEffectiveLevel()

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


class _PaddedFormatter(logging.Formatter):
    """``INFO:     coordinator: redis link up``: uvicorn's own line shape."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelprefix = f"{record.levelname}:".ljust(9)
        return super().format(record)


def ensure_visible(name: str = "coordinator") -> None:
    """Make the coordinator's INFO records visible under a host that set up no logging.

    Called by ``Coordinator.start()``. With the root logger configured (``logging.
    basicConfig``, ``dictConfig``, :func:`configure`) it does nothing: the records go
    where the application sends everything else, at the levels it chose.
    """
    logger = logging.getLogger(name)
    if logging.getLogger().handlers or any(isinstance(h, _FallbackHandler)
                                           for h in logger.handlers):
        return
    set_level = logger.level == logging.NOTSET
    handler = _FallbackHandler(logger, set_level)
    handler.setFormatter(_PaddedFormatter("%(levelprefix)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    if set_level:
        logger.setLevel(logging.INFO)


def configure(log_format: str, instance_id: str, level: int = logging.INFO) -> dict[str, object]:
    """Set up the root logger; returns a uvicorn ``log_config`` that routes through it."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(instance_id))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s [{instance_id}] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet_handshake_noise()
    return {"version": 1, "disable_existing_loggers": False,
            "loggers": {name: {"level": "INFO", "handlers": [], "propagate": True}
                        for name in ("uvicorn", "uvicorn.error", "uvicorn.access")}}


class HandshakeNoiseFilter(logging.Filter):
    """Drops uvicorn's "ASGI callable returned without completing handshake" error for
    handshakes the gate answered on purpose.

    uvicorn 0.54 (websockets-sansio and wsproto) logs that ERROR after every WebSocket
    denial response: one error line per clean rejection, which Cloud Logging counts as
    an error. The gate records each denial the moment it sends it; the filter drops one
    matching record per entry less than a second old, so a genuine app bug that returns
    without a handshake is still logged.
    """

    # Exactly the WebSocket protocols' lines: the HTTP ones ("... without starting
    # response.") go to the same logger and are real app bugs.
    MESSAGES = frozenset({"ASGI callable returned without completing handshake.",
                          "ASGI callable returned without sending handshake."})
    WINDOW = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._expected: collections.deque[float] = collections.deque(maxlen=4096)

    def expect(self) -> None:
        self._expected.append(time.monotonic())

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in self.MESSAGES:
            return True
        cutoff = time.monotonic() - self.WINDOW
        while self._expected and self._expected[0] < cutoff:
            self._expected.popleft()
        if self._expected:
            self._expected.popleft()
            return False
        return True


handshake_noise = HandshakeNoiseFilter()
UVICORN_ERROR_LOGGER = "uvicorn.error"


def quiet_handshake_noise(logger: str = UVICORN_ERROR_LOGGER) -> None:
    """Install the filter on uvicorn's error logger (idempotent).

    :func:`configure` (which ``python -m backend`` calls) installs it; a service that
    sets up its own logging and runs uvicorn itself calls it once at start.
    """
    target = logging.getLogger(logger)
    if handshake_noise not in target.filters:
        target.addFilter(handshake_noise)
