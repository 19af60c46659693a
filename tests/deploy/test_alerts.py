"""The PrometheusRule the chart renders, checked by Prometheus' own promtool: the PromQL parses, and the
saturation and refusal alerts fire on series that should fire them and stay quiet otherwise."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import NAMESPACE, Helm, by_kind

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing (apt-get install prometheus)")


@pytest.fixture(scope="module")
def rules_file(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    objects = helm.render("h100")
    (rule,) = by_kind(objects, "PrometheusRule").values()
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    return path, alerts


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def test_rules_parse(rules_file: tuple[Path, dict[str, Any]]) -> None:
    path, alerts = rules_file
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerts)} rules found" in done.stdout


def run_rule_test(
    rules: Path, series: list[dict[str, str]], cases: list[dict[str, Any]], tmp_path: Path
) -> None:
    """promtool's unit test of the rendered rules: these input series, these alerts at these times."""
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": cases}],
    }
    test_file = tmp_path / "rules_test.yaml"
    test_file.write_text(yaml.safe_dump(tests))
    done = promtool("test", "rules", str(test_file))
    assert done.returncode == 0, done.stdout + done.stderr


def expected(alert: dict[str, Any], value: str) -> dict[str, Any]:
    """The alert as promtool should report it, its annotation templates expanded for `value`."""
    annotations = {
        k: v.replace("{{ $value | humanizePercentage }}", value).replace("{{ $value }}", value)
        for k, v in alert["annotations"].items()
    }
    return {"exp_labels": dict(alert["labels"]), "exp_annotations": annotations}


def test_saturation_and_refusal_alerts_fire_only_when_they_should(
    rules_file: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, alerts = rules_file
    ns = f'namespace="{NAMESPACE}"'
    series = [
        # STT: 45 of 48 sessions busy for 15 minutes -> saturated (93.75 % > 85 %).
        {"series": f'voxgrid_stt_active_sessions{{{ns},pod="stt-a"}}', "values": "45x15"},
        {"series": f'voxgrid_stt_session_capacity{{{ns},pod="stt-a"}}', "values": "48x15"},
        # LLM: 100 of 256 -> not saturated.
        {"series": f'voxgrid_llm_active_sessions{{{ns},pod="llm-a"}}', "values": "100x15"},
        {"series": f'voxgrid_llm_session_capacity{{{ns},pod="llm-a"}}', "values": "256x15"},
        # TTS refuses 60 sessions a minute (1/s); the LLM's only errors are cancellations.
        {"series": f'voxgrid_tts_errors_total{{{ns},pod="tts-a",code="RESOURCE_EXHAUSTED"}}', "values": "0+60x15"},
        {"series": f'voxgrid_llm_errors_total{{{ns},pod="llm-a",code="CANCELLED"}}', "values": "0+60x15"},
    ]
    run_rule_test(path, series, [
        {"eval_time": "10m", "alertname": "VoxgridSttSaturated",
         "exp_alerts": [expected(alerts["VoxgridSttSaturated"], "93.75%")]},
        {"eval_time": "10m", "alertname": "VoxgridLlmSaturated", "exp_alerts": []},
        {"eval_time": "10m", "alertname": "VoxgridTtsRefusingSessions",
         "exp_alerts": [expected(alerts["VoxgridTtsRefusingSessions"], "1")]},
        {"eval_time": "10m", "alertname": "VoxgridLlmRefusingSessions", "exp_alerts": []},
        # `for: 5m` holds a fresh condition back.
        {"eval_time": "3m", "alertname": "VoxgridSttSaturated", "exp_alerts": []},
    ], tmp_path)


def test_absent_metrics_and_no_ready_replica_alerts(rules_file: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """A stage Prometheus hears nothing from, and a Deployment with no available pod (kube-state-metrics),
    each raise their alert; a healthy stage raises neither."""
    path, alerts = rules_file
    ns = f'namespace="{NAMESPACE}"'
    series = [
        # Every stage but the LLM reports its capacity; the LLM is silent (not scraped).
        *({"series": f'voxgrid_{svc}_session_capacity{{{ns},pod="{svc}-a"}}', "values": "8x20"}
          for svc in ("stt", "tts", "duplex", "orchestrator")),
        # kube-state-metrics: TTS lost its only pod; STT has one available.
        {"series": f'kube_deployment_status_replicas_available{{{ns},deployment="vg-voxgrid-tts"}}',
         "values": "1 1 0x18"},
        {"series": f'kube_deployment_status_replicas_available{{{ns},deployment="vg-voxgrid-stt"}}',
         "values": "1x20"},
    ]

    def fired(name: str, extra: dict[str, str]) -> list[dict[str, Any]]:
        alert = alerts[name]
        return [{"exp_labels": {**alert["labels"], **extra}, "exp_annotations": dict(alert["annotations"])}]

    run_rule_test(path, series, [
        {"eval_time": "15m", "alertname": "VoxgridLlmMetricsAbsent",
         "exp_alerts": fired("VoxgridLlmMetricsAbsent", {"namespace": NAMESPACE})},
        {"eval_time": "15m", "alertname": "VoxgridSttMetricsAbsent", "exp_alerts": []},
        # `for: 10m` holds a fresh silence back (a pod restarting is not an incident).
        {"eval_time": "5m", "alertname": "VoxgridLlmMetricsAbsent", "exp_alerts": []},
        {"eval_time": "10m", "alertname": "VoxgridTtsNoReadyReplica",
         "exp_alerts": fired("VoxgridTtsNoReadyReplica",
                             {"namespace": NAMESPACE, "deployment": "vg-voxgrid-tts"})},
        {"eval_time": "10m", "alertname": "VoxgridSttNoReadyReplica", "exp_alerts": []},
    ], tmp_path)
