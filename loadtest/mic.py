"""A simulated caller's microphone: one 20 ms frame every 20 ms, speech when asked, silence otherwise.

Frames follow an absolute schedule (no drift from sleep overshoot); how late the writer ran behind it
is kept, so a report can show whether the load generator itself kept real time.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

from voxgrid.loadtest.corpus import FRAME_MS, Utterance, silence_frame


class PacedMic:
    def __init__(self, write: Callable[[bytes], Awaitable[None]], frame_ms: int = FRAME_MS) -> None:
        self._write = write
        self._period = frame_ms / 1000.0
        self._queue: deque[bytes] = deque()
        self._said: asyncio.Future[float] | None = None
        self._stopped = False
        self.max_lag_ms = 0.0
        self.frames_sent = 0

    def say(self, utterance: Utterance) -> asyncio.Future[float]:
        """Queue an utterance (replacing anything unsaid); resolves with the monotonic time its last frame went out."""
        if self._said and not self._said.done():
            self._said.cancel()
        self._queue = deque(utterance.frames())
        self._said = asyncio.get_running_loop().create_future()
        return self._said

    @property
    def speaking(self) -> bool:
        return bool(self._queue)

    def stop(self) -> None:
        self._stopped = True

    async def run(self) -> None:
        next_at = time.monotonic()
        silence = silence_frame()
        while not self._stopped:
            frame = self._queue.popleft() if self._queue else silence
            await self._write(frame)
            self.frames_sent += 1
            if not self._queue and self._said and not self._said.done():
                self._said.set_result(time.monotonic())
            next_at += self._period
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.max_lag_ms = max(self.max_lag_ms, -delay * 1000)
                if -delay > 1.0:  # hopelessly behind (a stalled loop): resync instead of bursting
                    next_at = time.monotonic()
