"""Background tasks with an owner: named, logged when they die, cancelled and awaited.

Every long-lived task in the package (the coordinator's link, publisher, heartbeat and
poll; the gate's closes and pacing; the lease releaser; the dashboard feed's
subscription and ticker) is started through a :class:`TaskSet`, and its owner's
``stop``/``close`` calls :meth:`TaskSet.cancel`. The few tasks made directly each belong
to one call or one object that ends them itself: a dashboard request's pump (its
``finally``), a held handshake's pending receive (its ``finally``), a shared fleet read
(``SharedSnapshot.aclose``), the coordinator's one stop (awaited by every caller), the
drain's tasks (cancelled by ``Drains.detach``) and hypercorn's shutdown watcher
(cancelled by the restore of its signal). Nothing runs on after its owner is gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("coordinator")
CANCEL_ROUNDS = 10  # cancel() asks at most this many times, ROUND_WAIT apart
ROUND_WAIT = 0.5


class TaskSet:
    """The background tasks of one owner.

    ``prefix`` names them (``coordinator-link``, ``dashboard-events``) so that a stuck or
    dead task says whose it is. A task that raises is logged with its traceback at once,
    not when it is garbage-collected.
    """

    def __init__(self, prefix: str, logger: logging.Logger = log) -> None:
        self.prefix = prefix
        self.log = logger
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task: object) -> bool:
        return task in self._tasks

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.prefix}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("task %s died", task.get_name(), exc_info=task.exception())

    async def cancel(self) -> None:
        """Cancel every task and wait until each has ended.

        On Python 3.11 a cancellation can be swallowed: ``asyncio.wait_for`` (redis-py
        wraps every socket write in it) returns the result when the inner call finished in
        the same step, and the task goes on to its next await. So cancel again, a bounded
        number of times, and say which tasks would not end. The set is emptied first, so
        a task spawned while this waits is a new one and is left running.
        """
        pending = set(self._tasks)
        self._tasks.clear()
        for _ in range(CANCEL_ROUNDS):
            if not pending:
                break
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=ROUND_WAIT)
        if pending:
            self.log.error("tasks still running after cancel: %s",
                           ", ".join(sorted(t.get_name() for t in pending)))
