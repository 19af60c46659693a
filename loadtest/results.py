"""What a load run measured: one record per turn, one outcome per session, and their summaries.

Kept free of gRPC and plotting so the report and the capacity search can be tested on plain data.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from voxgrid.tables import pct as percentile

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)

# The per-turn number each mode is judged on (the SLO metric of the capacity search).
PRIMARY_METRIC: dict[str, str] = {
    "agent": "voice_to_voice_ms",
    "stt": "stt_finalization_ms",
    "llm": "llm_time_to_first_token_ms",
    "tts": "tts_time_to_first_audio_ms",
    "duplex": "duplex_output_lag_ms",
}


@dataclass
class TurnRecord:
    """One exchange: the caller said something (or sent text) and the system answered."""

    session: str
    turn: int
    started_s: float  # since the run started
    concurrency: int  # sessions live when the turn started
    metrics: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    barged_in: bool = False


@dataclass
class SessionOutcome:
    session: str
    code: str  # gRPC status code name; "OK" for a clean end
    turns: int
    duration_s: float
    message: str = ""
    started_s: float = 0.0  # since the run started


@dataclass
class RunResult:
    mode: str
    target: str
    sessions_wanted: int
    duration_s: float
    turns: list[TurnRecord] = field(default_factory=list)
    sessions: list[SessionOutcome] = field(default_factory=list)
    rtf: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def primary_metric(self) -> str:
        return PRIMARY_METRIC[self.mode]

    def values(self, metric: str) -> list[float]:
        return [t.metrics[metric] for t in self.turns if metric in t.metrics and math.isfinite(t.metrics[metric])]

    def metric_names(self) -> list[str]:
        names: dict[str, None] = {}
        for t in self.turns:
            names.update(dict.fromkeys(t.metrics))
        return list(names)

    def error_rate(self) -> float:
        return error_rate(self.sessions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "target": self.target, "sessions_wanted": self.sessions_wanted,
            "duration_s": self.duration_s, "primary_metric": self.primary_metric,
            "summary": {m: summarize(self.values(m)) for m in self.metric_names()},
            "by_concurrency": by_concurrency(self.turns, self.primary_metric),
            "sessions_by_code": dict(outcomes_by_code(self.sessions)),
            "error_rate": self.error_rate(), "rtf": self.rtf, "notes": self.notes,
            "turns": [asdict(t) for t in self.turns], "session_outcomes": [asdict(s) for s in self.sessions],
        }


def summarize(values: Sequence[float]) -> dict[str, float]:
    out = {"count": float(len(values)), "mean": float(np.mean(values)) if len(values) else float("nan")}
    out.update({f"p{q}": percentile(values, q) for q in PERCENTILES})
    out["max"] = float(max(values)) if len(values) else float("nan")
    return out


def outcomes_by_code(sessions: Iterable[SessionOutcome]) -> Counter[str]:
    return Counter(s.code for s in sessions)


def error_rate(sessions: Sequence[SessionOutcome]) -> float:
    """Share of sessions that ended with a status other than OK (0 with no sessions)."""
    if not sessions:
        return 0.0
    return sum(1 for s in sessions if s.code != "OK") / len(sessions)


def by_concurrency(turns: Iterable[TurnRecord], metric: str) -> dict[int, dict[str, float]]:
    """The metric's summary per number of live sessions at turn start: latency versus load."""
    groups: dict[int, list[float]] = {}
    for t in turns:
        if metric in t.metrics and math.isfinite(t.metrics[metric]):
            groups.setdefault(t.concurrency, []).append(t.metrics[metric])
    return {c: summarize(v) for c, v in sorted(groups.items())}
