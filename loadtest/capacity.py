"""Capacity at an SLO: raise concurrency step by step until p95 of the mode's latency passes the SLO
or more than 1 % of sessions fail; the answer is the largest concurrency that still met both.

The search logic takes the step runner as a function, so it is tested on plain numbers and driven by
real load runs in the CLI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from voxgrid.loadtest.results import RunResult, percentile


@dataclass
class StepVerdict:
    concurrency: int
    p95_ms: float
    error_rate: float
    turns: int
    passed: bool
    reason: str


@dataclass
class CapacityResult:
    slo_ms: float
    max_error_rate: float
    steps: list[StepVerdict] = field(default_factory=list)

    @property
    def capacity(self) -> int:
        """Largest concurrency that met the SLO before the first failing step (0 if even the first failed)."""
        best = 0
        for step in self.steps:
            if not step.passed:
                break
            best = step.concurrency
        return best


def judge(result: RunResult, concurrency: int, slo_ms: float, max_error_rate: float = 0.01,
          min_turns: int = 3) -> StepVerdict:
    values = result.values(result.primary_metric)
    p95 = percentile(values, 95)
    err = result.error_rate()
    if err > max_error_rate:
        return StepVerdict(concurrency, p95, err, len(values), False,
                           f"errors {100 * err:.1f} % > {100 * max_error_rate:.1f} %")
    if len(values) < min_turns:
        return StepVerdict(concurrency, p95, err, len(values), False, f"only {len(values)} turns measured")
    if not p95 <= slo_ms:
        return StepVerdict(concurrency, p95, err, len(values), False, f"p95 {p95:.0f} ms > SLO {slo_ms:.0f} ms")
    return StepVerdict(concurrency, p95, err, len(values), True, "met")


def levels(start: int = 1, factor: float = 2.0, limit: int = 256) -> Iterable[int]:
    """1, 2, 4, 8, ... up to `limit` (each step at least one more than the last)."""
    n = max(1, start)
    while n <= limit:
        yield n
        n = max(n + 1, round(n * factor))


async def search(run_step: Callable[[int], Awaitable[RunResult]], slo_ms: float = 800.0,
                 max_error_rate: float = 0.01, steps: Iterable[int] | None = None,
                 on_step: Callable[[StepVerdict, RunResult], None] | None = None) -> CapacityResult:
    out = CapacityResult(slo_ms, max_error_rate)
    for n in steps if steps is not None else levels():
        result = await run_step(n)
        verdict = judge(result, n, slo_ms, max_error_rate)
        out.steps.append(verdict)
        if on_step:
            on_step(verdict, result)
        if not verdict.passed:
            break
    return out
