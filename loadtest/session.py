"""What every simulated session shares: its identity, its budget, and where its measurements go."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from voxgrid.loadtest.corpus import Utterance
from voxgrid.loadtest.results import SessionOutcome, TurnRecord


@dataclass
class SessionContext:
    session_id: str
    channel: grpc.aio.Channel
    corpus: list[Utterance]
    rng: random.Random
    run_started: float  # monotonic
    deadline: float  # monotonic: no new turn starts after this
    live: Callable[[], int]  # sessions live now (for latency-vs-concurrency)
    record: Callable[[TurnRecord], None]
    turns_per_session: int = 3
    think_s: tuple[float, float] = (1.0, 2.0)
    barge_in_rate: float = 0.0
    reply_timeout_s: float = 30.0
    max_tokens: int = 40
    turns_done: int = field(default=0)

    def more_turns(self) -> bool:
        return self.turns_done < self.turns_per_session and time.monotonic() < self.deadline

    def new_turn(self) -> TurnRecord:
        rec = TurnRecord(self.session_id, self.turns_done + 1, time.monotonic() - self.run_started, self.live())
        self.turns_done += 1
        return rec

    async def think(self) -> None:
        lo, hi = self.think_s
        remaining = self.deadline - time.monotonic()
        await asyncio.sleep(max(0.0, min(self.rng.uniform(lo, hi), remaining)))

    def outcome(self, code: grpc.StatusCode | str, started: float, message: str = "") -> SessionOutcome:
        name = code if isinstance(code, str) else code.name
        return SessionOutcome(self.session_id, name, self.turns_done, time.monotonic() - started, message,
                              started - self.run_started)


def ms_since(t0: float) -> float:
    return (time.monotonic() - t0) * 1000.0
