"""Runs N simulated callers against one target: ramped, bounded in time and count, stopping by itself.

Each caller opens a session, plays `turns_per_session` turns, closes it and opens the next one until
the run's duration is spent; a session's last turn may finish after that, but everything is cancelled
at a hard deadline (duration + reply timeout + a grace), so a run always ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TextIO

from voxgrid.loadtest.agent_driver import run_agent_session
from voxgrid.loadtest.corpus import Utterance
from voxgrid.loadtest.results import RunResult, SessionOutcome, TurnRecord, percentile
from voxgrid.loadtest.service_drivers import run_duplex_session, run_llm_session, run_stt_session, run_tts_session
from voxgrid.loadtest.session import SessionContext

from voxgrid.client import channel

DRIVERS: dict[str, Callable[[SessionContext], Awaitable[SessionOutcome]]] = {
    "agent": run_agent_session,
    "stt": run_stt_session,
    "llm": run_llm_session,
    "tts": run_tts_session,
    "duplex": run_duplex_session,
}


@dataclass
class LoadConfig:
    target: str
    sessions: int = 1
    duration_s: float = 30.0
    mode: str = "agent"
    ramp_s: float = 0.0
    turns_per_session: int = 3
    think_s: tuple[float, float] = (1.0, 2.0)
    barge_in_rate: float = 0.0
    reply_timeout_s: float = 30.0
    max_tokens: int = 40
    max_sessions_total: int = 0  # 0 = no limit besides time
    token: str | None = None
    seed: int = 1
    grace_s: float = 15.0


class _Progress:
    """One status line, refreshed in place while the run goes."""

    def __init__(self, result: RunResult, live: Callable[[], int], out: TextIO | None) -> None:
        self.result, self.live, self.out = result, live, out

    def line(self, elapsed: float) -> str:
        vals = self.result.values(self.result.primary_metric)
        failed = sum(1 for s in self.result.sessions if s.code != "OK")
        p50, p95 = percentile(vals, 50), percentile(vals, 95)
        return (f"[{elapsed:5.0f}/{self.result.duration_s:.0f}s] live {self.live():3d}/{self.result.sessions_wanted}"
                f"  turns {len(self.result.turns):4d}  sessions ok {len(self.result.sessions) - failed}"
                f" failed {failed}  {self.result.primary_metric} p50 {p50:6.0f} p95 {p95:6.0f}")

    async def run(self, started: float) -> None:
        if self.out is None:
            return
        while True:
            tty = self.out.isatty()
            self.out.write(("\r" if tty else "") + self.line(time.monotonic() - started) + ("" if tty else "\n"))
            self.out.flush()
            await asyncio.sleep(1.0 if tty else 5.0)


async def run_load(cfg: LoadConfig, corpus: list[Utterance], progress: TextIO | None = sys.stderr) -> RunResult:
    if cfg.mode not in DRIVERS:
        raise ValueError(f"mode {cfg.mode!r} is unknown: use one of {', '.join(DRIVERS)}")
    result = RunResult(cfg.mode, cfg.target, cfg.sessions, cfg.duration_s)
    driver = DRIVERS[cfg.mode]
    started = time.monotonic()
    deadline = started + cfg.duration_s
    live = 0

    def live_now() -> int:
        return live

    opened = 0
    ch = channel(cfg.target, token=cfg.token)

    def record(rec: TurnRecord) -> None:
        result.turns.append(rec)

    async def caller(index: int) -> None:
        nonlocal live, opened
        rng = random.Random(cfg.seed * 1000 + index)
        await asyncio.sleep(cfg.ramp_s * index / max(1, cfg.sessions))
        n = 0
        while time.monotonic() < deadline and (not cfg.max_sessions_total or opened < cfg.max_sessions_total):
            n += 1
            opened += 1
            ctx = SessionContext(f"lt-{index}-{n}", ch, corpus, rng, started, deadline, live_now, record,
                                 cfg.turns_per_session, cfg.think_s, cfg.barge_in_rate, cfg.reply_timeout_s,
                                 cfg.max_tokens)
            live += 1
            try:
                outcome = await driver(ctx)
            except asyncio.CancelledError:
                result.sessions.append(ctx.outcome("CANCELLED", ctx.run_started, "cut at the run's hard deadline"))
                raise
            except Exception as exc:  # a driver bug must show up in the report, not hang the run
                outcome = ctx.outcome("UNKNOWN", started, f"{type(exc).__name__}: {exc}")
            finally:
                live -= 1
            result.sessions.append(outcome)
            if outcome.code != "OK":
                await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))  # no hot failure loop

    progress_task = asyncio.create_task(_Progress(result, live_now, progress).run(started))
    callers = [asyncio.create_task(caller(i)) for i in range(cfg.sessions)]
    hard_deadline = cfg.duration_s + cfg.reply_timeout_s + cfg.grace_s
    try:
        _, pending = await asyncio.wait(callers, timeout=hard_deadline)
        if pending:
            result.notes.append(f"{len(pending)} callers cut at the hard deadline ({hard_deadline:.0f} s)")
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    finally:
        for task in callers:
            task.cancel()
        progress_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await progress_task
        if progress is not None and progress.isatty():
            progress.write("\n")
        await ch.close()
    result.duration_s = time.monotonic() - started
    return result
