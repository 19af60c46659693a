"""The soak scenario's short form: the real local stack (tiny random LLM, so it starts in seconds) under a
minute of steady calls with barge-ins and typed tool questions; nothing is left behind once they end."""

from __future__ import annotations

import math

import pytest
from voxgrid.loadtest.results import RunResult
from voxgrid.loadtest.scenarios.soak import (
    RESOURCES,
    SoakReport,
    build_parser,
    growth_per_hour,
    print_report,
    soak,
)


def test_growth_per_hour_is_the_slope_of_the_second_half() -> None:
    times = [0.0, 60.0, 120.0, 180.0, 240.0, 300.0]
    warm_up_then_flat = [100.0, 180.0, 200.0, 200.0, 200.0, 200.0]
    assert growth_per_hour(times, warm_up_then_flat) == pytest.approx(0.0, abs=1e-6)
    leaking = [100.0 + t / 60.0 for t in times]  # one unit a minute
    assert growth_per_hour(times, leaking) == pytest.approx(60.0)
    assert math.isnan(growth_per_hour(times[:4], leaking[:4]))


def test_verdict_judges_growth_per_hour_against_the_limit_only_on_a_long_enough_run() -> None:
    def report(minutes: int, fds_per_minute: float) -> SoakReport:
        rest = {r: 10.0 for r in RESOURCES}
        samples = [{"llm": {**rest, "fds": 10.0 + fds_per_minute * m}} for m in range(minutes + 1)]
        return SoakReport(RunResult("agent", "x", 1, minutes * 60.0), times_s=[m * 60.0 for m in range(minutes + 1)],
                          samples=samples, before={"llm": rest}, after={"llm": rest})

    flat, leaking = report(60, 0.0), report(60, 1.0)  # a descriptor a minute = 60/hour, over the 16/hour limit
    assert flat.verdict("llm", "fds") == "ok" and flat.ok()
    assert leaking.verdict("llm", "fds") == "GROWING" and not leaking.ok()
    assert leaking.growth("llm", "fds") == pytest.approx(60.0)
    short = report(4, 1.0)
    assert short.verdict("llm", "fds") == "GROWING (short run)" and short.ok()


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.asyncio
async def test_short_soak_samples_every_service_and_leaves_nothing_behind(capsys) -> None:  # type: ignore[no-untyped-def]
    args = build_parser().parse_args([
        # Every first turn is talked over (rate 1), and answers are long enough to still be playing when
        # the caller starts: a random rate or a two-word answer left some runs without any barge-in.
        "--duration", "45", "--sample-s", "4", "--sessions", "2", "--turns", "2", "--max-tokens", "32",
        "--barge-in-rate", "1", "--tool-every-s", "10", "--llm-model", "tiny-random-qwen2"])
    report = await soak(args)
    print_report(report)
    printed = capsys.readouterr().out
    assert "growth/hour" in printed and "(short run)" in printed
    load = report.load
    failed = [(s.code, s.message) for s in load.sessions if s.code != "OK"]
    assert not failed and len(load.sessions) >= 2 and len(load.turns) >= 4, (failed, printed)
    assert any(t.barged_in for t in load.turns), printed
    assert report.tool_sessions >= 2, printed
    assert set(report.before) == {"stt", "llm", "tts", "orchestrator"} and len(report.samples) >= 8, printed
    for service in report.before:
        for resource in RESOURCES:
            assert all(s[service][resource] > 0 for s in report.samples), (service, resource)
        # The in-process probe sees the sessions' tasks come and go.
        assert max(report.series(service, "tasks")) > report.before[service]["tasks"], (service, printed)
        # At rest again, the calls left no tasks, descriptors or threads behind (a leak grows per call).
        before, after = report.before[service], report.after[service]
        assert after["tasks"] <= before["tasks"] + 2, (service, before, after)
        assert after["fds"] <= before["fds"] + 3, (service, before, after)
        assert after["threads"] <= before["threads"] + 3, (service, before, after)
