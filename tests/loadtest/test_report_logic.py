"""Percentiles, summaries, report files and the capacity search on plain data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from voxgrid.loadtest.capacity import CapacityResult, StepVerdict, judge, levels, search
from voxgrid.loadtest.report import write_report
from voxgrid.loadtest.results import RunResult, SessionOutcome, TurnRecord, by_concurrency, error_rate, summarize
from voxgrid.loadtest.scrape import Snapshot, parse, rtf_between


def run_with(values: list[float], codes: list[str], mode: str = "agent", concurrency: int = 1) -> RunResult:
    r = RunResult(mode, "127.0.0.1:1", concurrency, 10.0)
    metric = r.primary_metric
    r.turns = [TurnRecord(f"s{i}", 1, float(i), concurrency, {metric: v}) for i, v in enumerate(values)]
    r.sessions = [SessionOutcome(f"s{i}", c, 1, 1.0) for i, c in enumerate(codes)]
    return r


def test_summary_percentiles_match_numpy_and_order() -> None:
    rng = np.random.default_rng(0)
    values = list(rng.exponential(300, size=1000))
    s = summarize(values)
    for q in (50, 90, 95, 99):
        assert s[f"p{q}"] == pytest.approx(np.percentile(values, q))
    assert s["p50"] < s["p90"] < s["p95"] < s["p99"] <= s["max"]
    assert s["count"] == 1000


def test_summary_of_nothing_is_nan_not_an_error() -> None:
    s = summarize([])
    assert s["count"] == 0 and math.isnan(s["p95"])


def test_error_rate_and_grouping_by_concurrency() -> None:
    assert error_rate([]) == 0.0
    r = run_with([100, 200], ["OK", "OK", "UNAVAILABLE", "OK"])
    assert r.error_rate() == 0.25
    r.turns.append(TurnRecord("x", 1, 0.0, 3, {"voice_to_voice_ms": 900.0}))
    groups = by_concurrency(r.turns, "voice_to_voice_ms")
    assert sorted(groups) == [1, 3]
    assert groups[3]["p50"] == 900.0 and groups[1]["count"] == 2


def test_judge_passes_fails_on_latency_and_on_errors() -> None:
    ok = run_with([500.0] * 20, ["OK"] * 10)
    assert judge(ok, 1, slo_ms=800).passed
    slow = run_with([500.0] * 18 + [2000.0] * 2, ["OK"] * 10)
    v = judge(slow, 2, slo_ms=800)
    assert not v.passed and "SLO" in v.reason and v.p95_ms > 800
    failing = run_with([500.0] * 20, ["OK"] * 99 + ["UNAVAILABLE"] * 2)
    v = judge(failing, 4, slo_ms=800)
    assert not v.passed and "errors" in v.reason
    assert not judge(run_with([], ["OK"]), 1, slo_ms=800).passed  # nothing measured is not a pass


def test_levels_double_up_to_the_cap() -> None:
    assert list(levels(1, 2.0, 20)) == [1, 2, 4, 8, 16]
    assert list(levels(1, 1.2, 4)) == [1, 2, 3, 4]


async def test_search_stops_at_first_failing_step_and_reports_last_pass() -> None:
    ran: list[int] = []

    async def step(n: int) -> RunResult:  # latency grows with load: 200 ms per session
        ran.append(n)
        return run_with([200.0 * n] * 10, ["OK"] * 5, concurrency=n)

    cap = await search(step, slo_ms=800, steps=[1, 2, 4, 8, 16])
    assert ran == [1, 2, 4, 8]  # 8 sessions -> 1600 ms fails; 16 is never tried
    assert cap.capacity == 4


def test_capacity_is_zero_when_first_step_fails_and_ignores_passes_after_a_failure() -> None:
    cap = CapacityResult(800, 0.01, [StepVerdict(1, 900, 0, 5, False, "slow"), StepVerdict(2, 100, 0, 5, True, "met")])
    assert cap.capacity == 0


def test_write_report_files_and_strict_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = run_with([300.0, 400.0, 500.0], ["OK", "CANCELLED"])
    r.turns[0].metrics["stt_finalization_ms"] = 12.0
    r.rtf = {"stt": 0.1}
    out = write_report(r, tmp_path / "rep", slo_ms=800)
    data = json.loads((out / "report.json").read_text())  # strict: NaN would not parse back as a number
    assert data["summary"]["voice_to_voice_ms"]["p50"] == 400.0
    assert data["sessions_by_code"] == {"OK": 1, "CANCELLED": 1}
    assert data["summary"]["stt_finalization_ms"]["count"] == 1
    md = (out / "report.md").read_text()
    assert "voice_to_voice_ms" in md and "CANCELLED" in md and "| stt " in md
    for png in ("latency_cdf.png", "latency_vs_concurrency.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


PROM = """# HELP voxgrid_tts_real_time_factor Compute seconds per second of audio.
# TYPE voxgrid_tts_real_time_factor histogram
voxgrid_tts_real_time_factor_bucket{le="0.1"} 3.0
voxgrid_tts_real_time_factor_bucket{le="+Inf"} 4.0
voxgrid_tts_real_time_factor_count 4.0
voxgrid_tts_real_time_factor_sum 0.4
# HELP voxgrid_tts_active_sessions Streams being served now.
# TYPE voxgrid_tts_active_sessions gauge
voxgrid_tts_active_sessions 2.0
"""


def test_rtf_is_the_mean_over_the_run_only() -> None:
    before = parse(PROM)
    assert before.rtf["tts"] == (pytest.approx(0.4), 4.0)
    assert before.samples["voxgrid_tts_active_sessions"] == 2.0
    after = parse(PROM.replace("_count 4.0", "_count 6.0").replace("_sum 0.4", "_sum 1.0"))
    assert rtf_between(before, after) == {"tts": pytest.approx(0.3)}  # (1.0-0.4)/(6-4)
    assert rtf_between(after, after) == {}  # no new work, no number
    assert rtf_between(Snapshot(), before) == {"tts": pytest.approx(0.1)}
