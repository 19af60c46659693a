"""`voxgrid cost`: arithmetic checked by hand on a small example, bad inputs named, load-test reports read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from voxgrid.cli import main
from voxgrid.cost import CostInputError, compute, cost_per_minute_at, load_inputs, parse_inputs

EXAMPLE = {
    "gpu_price_per_hour": {"A": 2.0, "B": 0.5},
    "services": {
        "llm": {"gpu": "A", "sessions_per_replica": 10},
        "tts": {"gpu": "B", "sessions_per_replica": 4, "gpus_per_replica": 2},
    },
    "traffic": {"calls_per_day": 2880, "avg_call_minutes": 5, "peak_to_average": 2},
    "cloud_price_per_minute": 0.05,
}


def with_(**changes) -> dict:  # type: ignore[no-untyped-def]
    data = json.loads(json.dumps(EXAMPLE))
    for dotted, value in changes.items():
        *path, key = dotted.split("__")
        node = data
        for p in path:
            node = node[p]
        if value is None:
            del node[key]
        else:
            node[key] = value
    return data


def test_small_example_matches_hand_arithmetic() -> None:
    r = compute(parse_inputs(EXAMPLE))
    # 2880 calls x 5 min = 14400 min/day = 10 concurrent on average, 20 at peak.
    assert r.inputs.traffic.peak_concurrent == pytest.approx(20)
    llm, tts = r.services
    assert (llm.replicas, llm.gpus, llm.cost_per_day) == (2, 2, pytest.approx(2 * 2.0 * 24))  # 20/10 -> 2
    assert (tts.replicas, tts.gpus, tts.cost_per_day) == (5, 10, pytest.approx(10 * 0.5 * 24))  # 20/4 -> 5 x 2 GPUs
    assert r.cost_per_day == pytest.approx(96 + 120)
    assert r.cost_per_minute == pytest.approx(216 / 14400)  # 0.015
    assert r.cost_per_call == pytest.approx(0.015 * 5)
    assert (llm.peak_utilisation, llm.average_utilisation) == (pytest.approx(1.0), pytest.approx(0.5))
    # Per session-hour at peak sizing: A 2.0/10 + B 2 x 0.5/4 = 0.45; x peak 2 / 60 min = 0.015 per minute.
    assert r.asymptotic_cost_per_minute == pytest.approx(0.015)
    # Smallest volume: 1 replica each costs (2.0 + 1.0) x 24 = 72/day; 72 / (5 min x 0.05) = 288 calls/day,
    # at which peak is 2 sessions: still one replica of each.
    assert r.break_even_calls_per_day == pytest.approx(288)
    assert cost_per_minute_at(r.inputs, 288) == pytest.approx(0.05)


def test_max_utilisation_and_never_breaking_even() -> None:
    r = compute(parse_inputs(with_(max_utilisation=0.5)))
    assert [s.replicas for s in r.services] == [4, 10]  # 20 / (10 x 0.5), 20 / (4 x 0.5)
    # At 0.01 per minute the GPUs (0.015 per minute at any scale) never beat the cloud.
    assert compute(parse_inputs(with_(cloud_price_per_minute=0.01))).break_even_calls_per_day is None


@pytest.mark.parametrize(("data", "field"), [
    (with_(gpu_price_per_hour__A=-1), "gpu_price_per_hour.A is -1"),
    (with_(traffic__calls_per_day=None), "traffic.calls_per_day is missing"),
    (with_(traffic__peak_to_average=0.5), "traffic.peak_to_average is 0.5: it must be at least 1"),
    (with_(traffic__avg_call_minutes="three"), "traffic.avg_call_minutes is 'three': it must be a number"),
    (with_(services__llm__gpu="H100"), "services.llm.gpu 'H100' has no price"),
    (with_(services__tts__sessions_per_replica=0), "services.tts.sessions_per_replica is 0"),
    (with_(cloud_price_per_minute=None), "cloud_price_per_minute is missing"),
    (with_(max_utilisation=1.5), "max_utilisation is 1.5"),
])
def test_bad_inputs_name_the_field(data, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CostInputError, match=field.replace(".", r"\.").replace("(", r"\(")):
        parse_inputs(data)


def capacity_report(tmp_path: Path) -> Path:
    """A report.json written by the load tester's own writer after a capacity search on recorded step data."""
    import asyncio

    from voxgrid.loadtest.capacity import search
    from voxgrid.loadtest.report import write_report
    from voxgrid.loadtest.results import RunResult, SessionOutcome, TurnRecord

    def run(n: int) -> RunResult:
        r = RunResult("agent", "127.0.0.1:1", n, 10.0)
        r.turns = [TurnRecord(f"s{i}", 1, float(i), n, {r.primary_metric: 300.0 * n}) for i in range(6)]
        r.sessions = [SessionOutcome(f"s{i}", "OK", 1, 1.0) for i in range(n)]
        return r

    async def step(n: int) -> RunResult:
        return run(n)

    cap = asyncio.run(search(step, slo_ms=1000, steps=[1, 2, 4]))
    assert cap.capacity == 2  # 600 ms at 2 sessions met 1000 ms; 1200 ms at 4 did not
    out = write_report(run(4), tmp_path / "rep", 1000, extra_json={"capacity": {"slo_ms": 1000, "capacity": 2}})
    return out / "report.json"


def test_report_capacity_feeds_the_model_and_other_versions_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    report = capacity_report(tmp_path)
    data = with_(services__llm__report=str(report.relative_to(tmp_path)))
    r = compute(parse_inputs(data, tmp_path))
    assert r.services[0].sessions_per_replica == 2 and r.services[0].replicas == 10  # peak 20 / 2
    raw = json.loads(report.read_text())
    raw["report_format"] = 99
    report.write_text(json.dumps(raw))
    with pytest.raises(CostInputError, match=r"services\.llm\.report: .* has report_format 99"):
        parse_inputs(data, tmp_path)
    del raw["capacity"]
    raw["report_format"] = 1
    report.write_text(json.dumps(raw))
    with pytest.raises(CostInputError, match=r"has no capacity\.capacity: run `voxgrid loadtest --search`"):
        parse_inputs(data, tmp_path)


def test_usage_records_replace_the_assumed_call_length(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "usage.jsonl").write_text("\n".join(json.dumps({"duration_s": d}) for d in (120, 240, 360)))
    inputs = parse_inputs(with_(usage="usage.jsonl"), tmp_path)
    assert inputs.traffic.avg_call_minutes == pytest.approx(4.0)
    (tmp_path / "usage.jsonl").write_text('{"duration_s": -3}')
    with pytest.raises(CostInputError, match=r"usage: record 0 .* no valid duration_s"):
        parse_inputs(with_(usage="usage.jsonl"), tmp_path)


def test_cli_prints_the_table_and_plot_and_rejects_bad_files(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "cost.yaml"
    cfg.write_text(yaml.safe_dump(EXAMPLE))
    assert main(["cost", str(cfg), "--plot", str(tmp_path / "cost.png")]) == 0
    out = capsys.readouterr().out
    assert "cost per conversation minute: 0.0150 USD" in out and "288 calls/day" in out
    assert (tmp_path / "cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["cost", str(cfg)]) == 0
    assert "* self-hosted, - cloud price" in capsys.readouterr().out  # the text plot without --plot
    cfg.write_text(yaml.safe_dump(with_(gpu_price_per_hour__B=-0.5)))
    assert main(["cost", str(cfg)]) == 2
    assert "gpu_price_per_hour.B is -0.5" in capsys.readouterr().err
    assert main(["cost", str(tmp_path / "missing.yaml")]) == 2


def test_the_shipped_example_file_loads() -> None:
    inputs = load_inputs(Path(__file__).parents[2] / "deploy" / "cost-example.yaml")
    assert {s.name for s in inputs.services} == {"stt", "llm", "tts"}
    assert compute(inputs).cost_per_minute > 0


def test_load_test_report_gets_a_cost_section(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from voxgrid.loadtest.cli import cost_section

    cfg = tmp_path / "cost.yaml"
    cfg.write_text(yaml.safe_dump(EXAMPLE))
    md, data = cost_section(str(cfg), "llm", 5)  # this run measured 5 sessions per LLM replica
    assert md.startswith("## Cost (capacity of llm from this run")
    assert data["services"][0]["replicas"] == 4 and data["services"][0]["sessions_per_replica"] == 5.0
    md, data = cost_section(str(cfg), "agent", 5)
    assert "not computed: services.agent is not in" in md and "error" in data


def test_cost_from_a_real_local_stack_capacity_report() -> None:
    """data/local_stack_capacity_report.json: `voxgrid loadtest --search --slo-ms 8000 --sessions 2 --duration 40`
    against `voxgrid up` (stt, llm, tts, orchestrator on 2 shared CPU cores, load ~6): 1 session met the SLO
    (p95 4.2 s), 2 did not (p95 12.8 s). Priced as one CPU VM per stack at an example 0.10 USD/hour."""
    data = {
        "gpu_price_per_hour": {"cpu-2core": 0.10},
        "services": {"stack": {"gpu": "cpu-2core", "report": "data/local_stack_capacity_report.json"}},
        "traffic": {"calls_per_day": 1000, "avg_call_minutes": 3, "peak_to_average": 3},
        "cloud_price_per_minute": 0.07,
    }
    r = compute(parse_inputs(data, Path(__file__).parent))
    stack = r.services[0]
    assert stack.sessions_per_replica == 1  # the measured capacity
    # 3000 min/day = 2.08 concurrent on average, 6.25 at peak -> 7 stacks x 0.10 x 24 = 16.80 USD/day.
    assert stack.replicas == 7 and r.cost_per_day == pytest.approx(16.8)
    assert r.cost_per_minute == pytest.approx(16.8 / 3000)
    # One stack costs 2.40/day; 2.40 / (3 min x 0.07) = 11.4 calls/day, below the first step (1 stack holds
    # 1 peak session = 160 calls/day at 3 min and 3x peak).
    assert r.break_even_calls_per_day == pytest.approx(2.4 / 0.21)
