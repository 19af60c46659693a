"""Whether a call to this orchestrator will work: each stage of its default mode has a SERVING replica.

A probe (a Kubernetes readiness probe, `voxgrid up`, a load tester) that trusts the orchestrator's health
must not be told SERVING while the LLM is still loading: its first calls would fail with UNAVAILABLE.
So the orchestrator checks every backend replica's gRPC health periodically and reports each stage as a
dependency of its own health: `voxgrid.v1.Agent` (and "") is SERVING only while stt, llm and tts each have a
SERVING replica, and `voxgrid.v1.Agent/<stage>` answers per stage, so an operator sees which one is missing.
A configured duplex stage answers under its own name but does not hold the pipeline back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from voxgrid.orchestrator import telemetry
from voxgrid.orchestrator.routing import BackendPool

from voxgrid.server.health import ReplicaHealth
from voxgrid.v1 import agent_pb2

log = logging.getLogger("voxgrid.orchestrator.readiness")
AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name
PIPELINE_STAGES = ("stt", "llm", "tts")


def stage_health_name(stage: str) -> str:
    """The health service name that reports one stage, e.g. `voxgrid.v1.Agent/llm`."""
    return f"{AGENT_SERVICE}/{stage}"


def stage_problem(pool: BackendPool, statuses: dict[str, str]) -> str | None:
    """Why a stage cannot take a call now, in words for the log; None when a replica is SERVING."""
    if any(status == "SERVING" for status in statuses.values()):
        return None
    if not statuses:
        return f"{pool.stage} stage: no replica is known (check {pool.stage}_backends / discovery)"
    seen = ", ".join(f"{target} {status}" for target, status in sorted(statuses.items()))
    return f"{pool.stage} stage: no SERVING replica ({seen})"


class StageReadiness:
    """Checks every stage's replicas every `interval_s` and reports them into the replica's health."""

    def __init__(self, pools: list[BackendPool], health: ReplicaHealth, interval_s: float, timeout_s: float) -> None:
        self.pools = pools
        self.health = health
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.problems: dict[str, str | None] = {}
        self.ready = False
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> None:
        """One round: every replica of every stage at once."""
        rounds = await asyncio.gather(*(pool.probe(self.timeout_s) for pool in self.pools))
        for pool, statuses in zip(self.pools, rounds, strict=True):
            telemetry.STAGE_SERVING_REPLICAS.labels(pool.stage).set(
                sum(status == "SERVING" for status in statuses.values()))
            problem = stage_problem(pool, statuses)
            self._log_transition(pool.stage, problem)
            await self.health.set_dependency(stage_health_name(pool.stage), problem is None,
                                              required=pool.stage in PIPELINE_STAGES)
        ready = all(self.problems.get(stage) is None for stage in PIPELINE_STAGES)
        if ready and not self.ready:
            log.info("every pipeline stage (%s) has a SERVING replica", ", ".join(PIPELINE_STAGES))
        self.ready = ready

    def _log_transition(self, stage: str, problem: str | None) -> None:
        """Log when a stage comes or goes, never on every poll."""
        known = stage in self.problems
        was_missing = known and self.problems[stage] is not None
        self.problems[stage] = problem
        if known and was_missing == (problem is not None):
            return
        if problem is not None:
            log.warning("%s%s", "NOT_SERVING: " if stage in PIPELINE_STAGES else "", problem)
        elif known:
            log.info("%s stage has a SERVING replica again", stage)

    async def start(self) -> None:
        """The first round before returning, so the replica's first answer is already the true one."""
        await self.check()
        self._task = asyncio.create_task(self._run(), name="stage-readiness")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:  # a bug here must not leave the last status frozen in place silently
                log.exception("checking the backends' health failed; trying again in %.1fs", self.interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
