"""CI smoke: a short real load against the real local stack, and the report it leaves behind."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from voxgrid.loadtest.corpus import FRAME_BYTES, load_corpus
from voxgrid.loadtest.runner import LoadConfig, run_load
from voxgrid.loadtest.scrape import rtf_between, scrape

from voxgrid.cli import main


def test_default_corpus_is_real_speech_in_whole_frames() -> None:
    corpus = load_corpus()
    assert len(corpus) >= 3
    for utt in corpus:
        assert utt.text and 500 < utt.duration_ms < 6000
        frames = utt.frames()
        assert all(len(f) == FRAME_BYTES for f in frames)
        assert len(frames) == -(-len(utt.pcm16) // FRAME_BYTES)


@pytest.mark.e2e
@pytest.mark.slow
def test_cli_smoke_against_the_local_stack(local_stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    orch = next(c for c in local_stack if c.name == "orchestrator")
    report = tmp_path / "report"
    code = main(["loadtest", "--target", orch.target, "--sessions", "2", "--duration", "20", "--report", str(report),
                 "--think-s", "0.5,1", "--turns", "2", "--metrics", f"http://127.0.0.1:{orch.metrics_port}/metrics",
                 *[a for c in local_stack if c.name != "orchestrator"
                   for a in ("--metrics", f"http://127.0.0.1:{c.metrics_port}/metrics")]])
    assert code == 0
    data = json.loads((report / "report.json").read_text())
    assert (report / "report.md").exists() and (report / "latency_cdf.png").stat().st_size > 1000
    v2v = data["summary"]["voice_to_voice_ms"]
    assert v2v["count"] >= 2
    # Plausible: an answer comes after the endpointer's silence, and within the reply timeout.
    assert 50 < v2v["p50"] < 30000 and v2v["p50"] <= v2v["p95"] <= v2v["p99"]
    stages = data["summary"]
    assert stages["stt_finalization_ms"]["count"] == v2v["count"]
    assert stages["llm_time_to_first_token_ms"]["p50"] > 0 and stages["tts_time_to_first_audio_ms"]["p50"] > 0
    assert data["sessions_by_code"].get("OK", 0) >= 2 and data["error_rate"] == 0.0
    assert 0 < data["rtf"]["stt"] < 5 and 0 < data["rtf"]["tts"] < 5
    for turn in data["turns"]:
        m = turn["metrics"]
        if "voice_to_voice_ms" not in m:
            continue
        if m["speculative"]:  # LLM and TTS ran during the endpoint wait and the final, which the caller waited for
            waited = m["endpoint_wait_ms"] + m["stt_finalization_ms"] + m["orchestration_overhead_ms"]
            assert waited <= m["voice_to_voice_ms"] + 1e-3
        else:  # the stages add up to what the caller waited
            parts = sum(m[k] for k in ("endpoint_wait_ms", "stt_finalization_ms", "llm_time_to_first_token_ms",
                                       "tts_time_to_first_audio_ms", "orchestration_overhead_ms", "tool_ms"))
            assert math.isclose(parts, m["voice_to_voice_ms"], rel_tol=1e-6, abs_tol=1e-3)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.asyncio(loop_scope="module")
async def test_tts_mode_and_a_dead_target(local_stack) -> None:  # type: ignore[no-untyped-def]
    tts = next(c for c in local_stack if c.name == "tts")
    urls = [f"http://127.0.0.1:{tts.metrics_port}/metrics"]
    before = await scrape(urls)
    result = await run_load(LoadConfig(tts.target, sessions=2, duration_s=6, mode="tts", think_s=(0.2, 0.4)),
                            load_corpus(), progress=None)
    assert result.error_rate() == 0.0 and len(result.values("tts_time_to_first_audio_ms")) >= 4
    assert rtf_between(before, await scrape(urls))["tts"] > 0
    # Nothing listens on the metrics port as gRPC: every session fails, with the code counted, and the run still ends.
    dead = await run_load(LoadConfig(f"127.0.0.1:{tts.metrics_port + 7}", sessions=2, duration_s=3, mode="tts",
                                     reply_timeout_s=5), load_corpus(), progress=None)
    assert dead.sessions and all(s.code == "UNAVAILABLE" for s in dead.sessions)


@pytest.mark.e2e
@pytest.mark.slow
def test_locust_headless_reports_voice_to_voice(local_stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("locust", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("locust is not installed (pip install 'voxgrid[loadtest]')")
    orch = next(c for c in local_stack if c.name == "orchestrator")
    root = Path(__file__).resolve().parents[2]
    subprocess.run([str(Path(sys.executable).parent / "locust"), "-f", str(root / "loadtest" / "locustfile.py"),
                    "--headless", "-u", "1", "-r", "1", "-t", "25s", "--host", orch.target, "--turns-per-session", "1",
                    "--csv", str(tmp_path / "lt"), "--only-summary"],
                   cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, timeout=120, check=False)
    rows = {r["Name"]: r for r in csv.DictReader((tmp_path / "lt_stats.csv").open())}
    assert int(rows["voice_to_voice_ms"]["Request Count"]) >= 1
    assert float(rows["voice_to_voice_ms"]["Median Response Time"]) > 0
    assert int(rows["session"]["Failure Count"]) == 0
