"""Admission bookkeeping shared by every front door (the gRPC session gate and the gateway's call gate).

One job: count live sessions against a limit, refuse while draining, and let a drain wait until the last
one has gone. What a refusal looks like on the wire (a gRPC status, a WebSocket close code) stays with
each door.
"""

from __future__ import annotations

import asyncio


class Admission:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def full(self) -> bool:
        return self.active >= self.limit

    def enter(self) -> None:
        self.active += 1
        self._idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    async def wait_idle(self, within_s: float) -> bool:
        """True once nothing is live, False if `within_s` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), within_s)
            return True
        except TimeoutError:
            return False
