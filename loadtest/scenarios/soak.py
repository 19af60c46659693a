"""Scenario (c): soak. Does anything grow with traffic that should not? Callers dial at a steady rate
(each call a spoken turn or two, some talked over: barge-ins) and a second caller asks a question a
knowledge tool answers (typed, tool calls), for a long time, while every service's resident memory,
open file descriptors, threads (/proc) and asyncio tasks (its `voxgrid_<svc>_event_loop_tasks` gauge)
are sampled. The table gives, per service and resource, the level at rest before and after the load,
and the growth per hour under load (least-squares slope over the second half of the run, after the
warm-up allocations), with a verdict against a per-hour limit.

    python -m voxgrid.loadtest.scenarios.soak                      # one hour, a sample a minute (make soak)
    python -m voxgrid.loadtest.scenarios.soak --duration 120 --sample-s 5 --llm-model tiny-random-qwen2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from voxgrid.loadtest.corpus import INPUT_SPEC
from voxgrid.loadtest.results import RunResult
from voxgrid.loadtest.runner import run_load
from voxgrid.loadtest.scenarios.common import corpus, latency_row, latency_table, load_config, parser
from voxgrid.loadtest.scenarios.stack import Stack, rss_mb
from voxgrid.loadtest.scrape import scrape
from voxgrid.orchestrator.client import TE, AgentCall

from voxgrid.client import channel
from voxgrid.processes import ServiceProcess
from voxgrid.tables import table
from voxgrid.v1 import agent_pb2, agent_pb2_grpc, audio_pb2

RESOURCES = ("rss_mb", "fds", "threads", "tasks")
# A slope over less than this (the second half of the run) is mostly warm-up: reported, not judged.
MIN_TREND_S = 600.0
# Growth per hour under steady load above which a resource counts as leaking (defaults of --limit-*).
LIMITS_PER_HOUR = {"rss_mb": 64.0, "fds": 16.0, "threads": 4.0, "tasks": 64.0}
KNOWLEDGE = ("Opening hours: the shop opens at nine in the morning and closes at six in the evening, "
             "Monday to Saturday.\n\nParking: there is free parking behind the building.\n")
TOOL_QUESTION = "Use the lookup tool: when does the shop open?"


def growth_per_hour(times_s: list[float], values: list[float]) -> float:
    """Slope over the second half of the samples, per hour (NaN with fewer than 3 points)."""
    half = len(times_s) // 2
    t, v = np.asarray(times_s[half:]), np.asarray(values[half:])
    if len(t) < 3 or np.ptp(t) == 0:
        return float("nan")
    return float(np.polyfit(t, v, 1)[0] * 3600.0)


def process_resources(pid: int) -> dict[str, float]:
    """RSS (MB), open file descriptors and threads of a process from /proc (zeros once it has gone)."""
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        threads = next(int(line.split()[1]) for line in status if line.startswith("Threads:"))
    except (FileNotFoundError, ProcessLookupError):
        return {"rss_mb": 0.0, "fds": 0.0, "threads": 0.0}
    return {"rss_mb": rss_mb(pid), "fds": float(fds), "threads": float(threads)}


async def sample(procs: dict[str, ServiceProcess]) -> dict[str, dict[str, float]]:
    """One reading of every resource of every service."""
    out = {}
    for name, proc in procs.items():
        assert proc.proc is not None
        values = process_resources(proc.proc.pid)
        snap = await scrape([f"http://127.0.0.1:{proc.metrics_port}/metrics"])
        values["tasks"] = snap.samples.get(f"voxgrid_{proc.service}_event_loop_tasks", float("nan"))
        out[name] = values
    return out


@dataclass
class SoakReport:
    load: RunResult
    times_s: list[float] = field(default_factory=list)
    samples: list[dict[str, dict[str, float]]] = field(default_factory=list)
    before: dict[str, dict[str, float]] = field(default_factory=dict)  # at rest, after a warm-up call
    after: dict[str, dict[str, float]] = field(default_factory=dict)  # at rest, after the load
    tool_calls: int = 0
    tool_sessions: int = 0
    limits: dict[str, float] = field(default_factory=lambda: dict(LIMITS_PER_HOUR))

    def series(self, service: str, resource: str) -> list[float]:
        return [s[service][resource] for s in self.samples]

    def growth(self, service: str, resource: str) -> float:
        return growth_per_hour(self.times_s, self.series(service, resource))

    def short(self) -> bool:
        half = self.times_s[len(self.times_s) // 2 :]
        return not half or half[-1] - half[0] < MIN_TREND_S

    def verdict(self, service: str, resource: str) -> str:
        growth = self.growth(service, resource)
        if np.isnan(growth):
            return "too few samples"
        verdict = "ok" if growth <= self.limits[resource] else "GROWING"
        return f"{verdict} (short run)" if self.short() else verdict

    def rows(self) -> list[list[object]]:
        rows: list[list[object]] = []
        for service in self.before:
            for r in RESOURCES:
                series = self.series(service, r)
                rows.append([service, r, self.before[service][r], max(series, default=float("nan")),
                             self.after[service][r], self.growth(service, r), self.limits[r], self.verdict(service, r)])
        return rows

    def ok(self) -> bool:
        return self.load.error_rate() == 0 and all(row[-1] != "GROWING" for row in self.rows())  # short: not judged


async def ask_tool_questions(target: str, every_s: float, until: float, max_tokens: int, report: SoakReport) -> None:
    """A steady trickle of typed questions that a knowledge tool answers, one session each, one started every
    `every_s` whether or not the last one is over: a session lasts until its answer has been played, which on
    a loaded machine can outlast the interval (one after the other, a 45 s run then held a single one)."""
    stub = agent_pb2_grpc.AgentStub(ch := channel(target))
    tool = agent_pb2.AgentTool(schema=audio_pb2.ToolSchema(
        name="lookup", description="Search the shop's notes (opening hours, parking).",
        parameters_json='{"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}'),
        knowledge_collection="default")
    config = agent_pb2.SessionConfig(input_format=INPUT_SPEC.to_proto(), tools=[tool])
    config.sampling.max_tokens = max_tokens

    async def ask() -> None:
        async with AgentCall(stub, config) as call:
            call.send(agent_pb2.ConverseRequest(text=TOOL_QUESTION))
            with contextlib.suppress(TimeoutError, RuntimeError):
                await call.wait_for(call.turn_over(1), timeout_s=60)
            report.tool_sessions += 1
            report.tool_calls += len(call.record.events(TE.KIND_TOOL_CALL_FINISHED))

    asking: list[asyncio.Task[None]] = []
    try:
        while time.monotonic() < until:
            next_at = time.monotonic() + every_s
            asking.append(asyncio.create_task(ask()))
            await asyncio.sleep(max(0.0, min(next_at, until) - time.monotonic()))
        await asyncio.gather(*asking)
    finally:
        for task in asking:
            task.cancel()
        await asyncio.gather(*asking, return_exceptions=True)
        await ch.close()


async def soak(args: argparse.Namespace) -> SoakReport:
    with tempfile.TemporaryDirectory(prefix="voxgrid-soak-") as knowledge:
        (Path(knowledge) / "shop.txt").write_text(KNOWLEDGE)
        backend_env = {"VOXGRID_LLM_MODEL": args.llm_model} if args.llm_model else {}
        async with Stack(orchestrator_env={"VOXGRID_ORCHESTRATOR_KNOWLEDGE_DIR": knowledge},
                         backend_env=backend_env) as stack:
            procs = {p.service: p for p in stack.all()}  # one replica of each
            target = stack.orchestrator.target
            # Warm-up: the first call opens the backend channels and loads lazy state; rest is measured after.
            await run_load(load_config(target, args, sessions=1, duration_s=1.0, max_sessions_total=1), corpus(),
                           progress=None)
            await asyncio.sleep(args.settle_s)
            report = SoakReport(RunResult("agent", target, args.sessions, args.duration), before=await sample(procs))
            report.limits.update({r: getattr(args, f"limit_{r}") for r in RESOURCES})
            load = asyncio.create_task(run_load(load_config(target, args, barge_in_rate=args.barge_in_rate), corpus(),
                                                progress=None))
            t0 = time.monotonic()
            tools = asyncio.create_task(
                ask_tool_questions(target, args.tool_every_s, t0 + args.duration, args.max_tokens, report))
            try:
                while not load.done():
                    report.times_s.append(time.monotonic() - t0)
                    report.samples.append(await sample(procs))
                    await asyncio.wait({load}, timeout=args.sample_s)
                report.load = load.result()
                await tools
            finally:
                for task in (load, tools):
                    task.cancel()
                await asyncio.gather(load, tools, return_exceptions=True)
            await asyncio.sleep(args.settle_s)  # sessions end, backends let go of their streams
            report.after = await sample(procs)
    return report


def print_report(report: SoakReport) -> None:
    load = report.load
    barged = sum(1 for t in load.turns if t.barged_in)
    print(f"soak: {len(load.sessions)} spoken sessions ({len(load.sessions) / max(load.duration_s, 1) * 60:.1f}"
          f"/min), {len(load.turns)} turns ({barged} barge-ins), {report.tool_sessions} tool sessions "
          f"({report.tool_calls} tool calls) in {load.duration_s:.0f} s, {len(report.samples)} samples")
    print(table(["service", "resource", "at rest before", "max under load", "at rest after", "growth/hour",
                 "limit/hour", "verdict"], report.rows()))
    print()
    print(latency_table([latency_row("soak", load)]))


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__, sessions=2, duration=3600.0)
    p.set_defaults(turns=2)
    p.add_argument("--sample-s", type=float, default=60.0, help="seconds between samples")
    p.add_argument("--settle-s", type=float, default=3.0, help="rest before the before/after samples")
    p.add_argument("--barge-in-rate", type=float, default=0.3, help="share of turns the caller talks over")
    p.add_argument("--tool-every-s", type=float, default=20.0, help="a typed tool question this often")
    p.add_argument("--llm-model", default="", help="VOXGRID_LLM_MODEL of the LLM replica (default: its own)")
    for r in RESOURCES:
        p.add_argument(f"--limit-{r.replace('_', '-')}", dest=f"limit_{r}", type=float, default=LIMITS_PER_HOUR[r],
                       help=f"growth of {r} per hour counted as a leak")
    return p


async def main(argv: list[str] | None = None) -> int:
    report = await soak(build_parser().parse_args(argv))
    print_report(report)
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
