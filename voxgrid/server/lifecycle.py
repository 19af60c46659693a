"""What a replica process does with SIGTERM and SIGINT, for every kind of server voxgrid runs.

The first signal drains (live sessions finish within the grace period), a second one stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Protocol

log = logging.getLogger("voxgrid.server")


class Drainable(Protocol):
    async def drain(self) -> None: ...

    async def stop(self) -> None: ...

    async def wait_stopped(self) -> None: ...


class SignalDrain:
    """Installed before the server starts; `wait` returns once the server has stopped and drained."""

    def __init__(self, server: Drainable) -> None:
        self.server = server
        self.tasks: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        loop = asyncio.get_running_loop()
        if self.tasks:
            log.warning("second signal: stopping without waiting")
            self.tasks.append(loop.create_task(self.server.stop()))
            return
        log.info("received %s", signal.Signals(signum).name)
        self.tasks.append(loop.create_task(self.server.drain()))

    async def wait(self) -> None:
        await self.server.wait_stopped()
        for task in self.tasks:
            with contextlib.suppress(Exception):
                await task
