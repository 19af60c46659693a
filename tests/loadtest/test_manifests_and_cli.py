"""The in-cluster Job manifest is a valid Kubernetes object, and the CLI wires every option."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from voxgrid.loadtest.cli import config_from_args

from voxgrid.cli import build_parser

JOB = Path(__file__).resolve().parents[2] / "loadtest" / "k8s" / "job.yaml"


def test_job_manifest_validates_strictly() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    job = yaml.safe_load(JOB.read_text())
    kv.validate(job, "1.30.0", strict=True)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "voxgrid loadtest" in container["args"][0] and job["spec"]["activeDeadlineSeconds"] > 0


def test_cli_builds_the_load_config() -> None:
    args = build_parser().parse_args(["loadtest", "--target", "127.0.0.1:9", "--sessions", "4", "--duration", "12",
                                      "--report", "r", "--mode", "stt", "--think-s", "0.5,1.5", "--ramp-s", "2",
                                      "--barge-in-rate", "0.3"])
    cfg = config_from_args(args)
    assert (cfg.sessions, cfg.duration_s, cfg.mode, cfg.think_s, cfg.ramp_s, cfg.barge_in_rate) == (
        4, 12.0, "stt", (0.5, 1.5), 2.0, 0.3)
    assert args.slo_ms == 800.0 and not args.search
    assert config_from_args(args, sessions=8).sessions == 8
