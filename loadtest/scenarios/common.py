"""Shared by the scenario scripts: argument defaults, the load config, and outcome tables."""

from __future__ import annotations

import argparse

from voxgrid.loadtest.corpus import load_corpus
from voxgrid.loadtest.results import RunResult
from voxgrid.loadtest.runner import LoadConfig

from voxgrid.tables import pct, table


def parser(doc: str | None, sessions: int = 3, duration: float = 60.0) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(doc or "").strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=sessions, help="concurrent simulated callers")
    p.add_argument("--duration", type=float, default=duration, help="seconds of load")
    p.add_argument("--turns", type=int, default=2, help="turns per session")
    p.add_argument("--max-tokens", type=int, default=24, help="LLM tokens per answer (short turns, more of them)")
    return p


def load_config(target: str, args: argparse.Namespace, **kw: object) -> LoadConfig:
    base = dict(sessions=args.sessions, duration_s=args.duration, turns_per_session=args.turns,
                think_s=(0.5, 1.0), max_tokens=args.max_tokens, reply_timeout_s=30.0)
    base.update(kw)
    return LoadConfig(target, **base)  # type: ignore[arg-type]


def corpus():  # type: ignore[no-untyped-def]
    return load_corpus()


def latency_row(label: str, result: RunResult) -> list[object]:
    v = result.values("voice_to_voice_ms")
    codes = ", ".join(f"{k} {n}" for k, n in sorted(result.to_dict()["sessions_by_code"].items()))
    return [label, len(v), pct(v, 50), pct(v, 95), codes]


def latency_table(rows: list[list[object]]) -> str:
    return table(["run", "turns", "v2v p50 ms", "v2v p95 ms", "sessions by code"], rows)
