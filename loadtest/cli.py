"""`voxgrid loadtest`: real-time-paced sessions against a target, a report, and an optional capacity search."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from voxgrid.loadtest.capacity import CapacityResult, StepVerdict, levels, search
from voxgrid.loadtest.corpus import load_corpus
from voxgrid.loadtest.report import latency_table, write_report
from voxgrid.loadtest.results import RunResult, summarize
from voxgrid.loadtest.runner import DRIVERS, LoadConfig, run_load
from voxgrid.loadtest.scrape import local_stack_metrics_urls, rtf_between, scrape

from voxgrid.tables import table


def _think(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    return float(lo), float(hi or lo)


def config_from_args(args: argparse.Namespace, sessions: int | None = None) -> LoadConfig:
    return LoadConfig(
        target=args.target, sessions=sessions or args.sessions, duration_s=args.duration, mode=args.mode,
        ramp_s=args.ramp_s, turns_per_session=args.turns, think_s=_think(args.think_s),
        barge_in_rate=args.barge_in_rate, reply_timeout_s=args.reply_timeout_s, max_tokens=args.max_tokens,
        max_sessions_total=args.max_sessions_total, token=args.token or None, seed=args.seed)


def metrics_urls(args: argparse.Namespace) -> list[str]:
    urls = list(args.metrics or [])
    if args.stack_base_port:
        urls += local_stack_metrics_urls(args.stack_base_port)
    return urls


async def measured_run(cfg: LoadConfig, corpus: list, urls: list[str]) -> RunResult:  # type: ignore[type-arg]
    """One load run with the services' /metrics scraped before and after (RTF over the run)."""
    before = await scrape(urls)
    result = await run_load(cfg, corpus)
    after = await scrape(urls)
    result.rtf = rtf_between(before, after)
    result.notes += [f"metrics scrape failed: {e}" for e in after.errors]
    return result


def capacity_markdown(cap: CapacityResult, metric: str) -> str:
    rows = [[s.concurrency, s.turns, s.p95_ms, f"{100 * s.error_rate:.1f}", s.reason] for s in cap.steps]
    return (f"## Capacity search (SLO: p95 {metric} <= {cap.slo_ms:.0f} ms, errors <= "
            f"{100 * cap.max_error_rate:.0f} %)\n\n"
            + table(["sessions", "turns", "p95 ms", "errors %", "verdict"], rows)
            + f"\n\n**Capacity: {cap.capacity} concurrent sessions**")


def cost_section(cost_file: str, service: str, capacity: int) -> tuple[str, dict]:  # type: ignore[type-arg]
    """The report's "Cost" section: `voxgrid cost` with this search's capacity for `service`."""
    import dataclasses

    from voxgrid.cost import CostInputError, compute, load_inputs, markdown

    try:
        inputs = load_inputs(cost_file)
        if service not in {s.name for s in inputs.services}:
            raise CostInputError(f"services.{service} is not in {cost_file}: add it or pass --cost-service")
        if capacity <= 0:
            raise CostInputError("capacity is 0: no step met the SLO, so there is nothing to price")
        inputs = dataclasses.replace(inputs, services=tuple(
            dataclasses.replace(s, sessions_per_replica=float(capacity), source="this load test")
            if s.name == service else s for s in inputs.services))
    except CostInputError as exc:
        return f"## Cost\n\nnot computed: {exc}", {"error": str(exc)}
    result = compute(inputs)
    return f"## Cost (capacity of {service} from this run; prices from {cost_file})\n\n{markdown(result)}", \
        result.to_dict()


async def loadtest(args: argparse.Namespace) -> int:
    corpus = load_corpus(args.corpus or None)
    urls = metrics_urls(args)
    if not args.search:
        result = await measured_run(config_from_args(args), corpus, urls)
        out = write_report(result, args.report, args.slo_ms)
        print(latency_table(result))
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(result.to_dict()["sessions_by_code"].items()))
        print(f"\nsessions: {codes or 'none'}; rtf: {result.rtf or 'not scraped'}; report: {out}/report.md")
        return 0 if result.turns and result.error_rate() <= 0.01 else 1

    per_step: dict[int, dict[str, float]] = {}
    merged = RunResult(args.mode, args.target, args.sessions, 0.0)

    async def step(n: int) -> RunResult:
        print(f"\n== {n} concurrent sessions for {args.duration:.0f} s", file=sys.stderr)
        result = await measured_run(config_from_args(args, sessions=n), corpus, urls)
        write_report(result, Path(args.report) / f"step-{n:03d}", args.slo_ms)
        return result

    def on_step(verdict: StepVerdict, result: RunResult) -> None:
        per_step[verdict.concurrency] = summarize(result.values(result.primary_metric))
        merged.turns += result.turns
        merged.sessions += result.sessions
        merged.duration_s += result.duration_s
        merged.rtf = result.rtf
        print(f"   {verdict.concurrency} sessions: p95 {verdict.p95_ms:.0f} ms, "
              f"errors {100 * verdict.error_rate:.1f} % -> {verdict.reason}", file=sys.stderr)

    cap = await search(step, args.slo_ms, args.max_error_rate, levels(1, 2.0, args.sessions), on_step)
    md = capacity_markdown(cap, merged.primary_metric)
    extra: dict = {"capacity": {  # type: ignore[type-arg]
        "slo_ms": cap.slo_ms, "max_error_rate": cap.max_error_rate, "capacity": cap.capacity,
        "steps": [asdict(s) for s in cap.steps]}}
    if args.cost:
        cost_md, cost_json = cost_section(args.cost, args.cost_service or args.mode, cap.capacity)
        md += "\n\n" + cost_md
        extra["cost"] = cost_json
    write_report(merged, args.report, args.slo_ms, extra_json=extra, extra_md=md, concurrency_points=per_step)
    print(md)
    print(f"\nreport: {args.report}/report.md")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loadtest", help="real-time-paced load against the agent or one service; report + capacity",
                       description=(__doc__ or "").strip())
    p.add_argument("--target", required=True, help="HOST:PORT of the orchestrator (or of the service in --mode)")
    p.add_argument("--sessions", type=int, default=1, help="concurrent simulated callers (with --search: the cap)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load (per step with --search)")
    p.add_argument("--report", required=True, help="folder for report.json, report.md and the PNG plots")
    p.add_argument("--mode", choices=list(DRIVERS), default="agent", help="what to drive (default: agent)")
    p.add_argument("--ramp-s", type=float, default=0.0, help="spread the callers' starts over this many seconds")
    p.add_argument("--corpus", default="", help="folder of .wav files (default: questions spoken by flite)")
    p.add_argument("--turns", type=int, default=3, help="turns per session before it hangs up and redials")
    p.add_argument("--think-s", default="1,2", help="pause between the agent's answer and the next question: LO,HI")
    p.add_argument("--barge-in-rate", type=float, default=0.0, help="share of turns the caller talks over the agent")
    p.add_argument("--reply-timeout-s", type=float, default=30.0, help="give up waiting for one answer after this")
    p.add_argument("--max-tokens", type=int, default=40, help="cap on LLM tokens per answer (keeps turns short)")
    p.add_argument("--max-sessions-total", type=int, default=0, help="stop opening sessions after this many (0: none)")
    p.add_argument("--slo-ms", type=float, default=800.0, help="p95 latency objective for --search (ms)")
    p.add_argument("--max-error-rate", type=float, default=0.01, help="failed-session share that fails a step")
    p.add_argument("--search", action="store_true", help="capacity search: 1, 2, 4, ... sessions up to --sessions")
    p.add_argument("--metrics", action="append", help="a service's /metrics URL to scrape RTF from (repeatable)")
    p.add_argument("--stack-base-port", type=int, default=0,
                   help="scrape every /metrics of a `voxgrid up --base-port PORT` stack")
    p.add_argument("--token", default="", help="bearer token for the target")
    p.add_argument("--cost", default="", help="with --search: add a cost section priced by this `voxgrid cost` YAML")
    p.add_argument("--cost-service", default="", help="the YAML service this run measured (default: the mode)")
    p.add_argument("--seed", type=int, default=1, help="random seed (utterance choice, think time, barge-ins)")
    p.set_defaults(func=loadtest)
