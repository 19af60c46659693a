"""Writes a run (or a capacity search) as report.json, report.md and PNG plots in one folder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from voxgrid.loadtest.results import PERCENTILES, RunResult, by_concurrency, summarize

from voxgrid.tables import table

# Bumped when report.json changes shape; `voxgrid cost` refuses reports of another format.
REPORT_FORMAT = 1
# Metrics shown first in tables (when present), in pipeline order.
KEY_METRICS = ("voice_to_voice_ms", "client_voice_to_voice_ms", "endpoint_wait_ms", "stt_finalization_ms",
               "llm_time_to_first_token_ms", "tts_time_to_first_audio_ms", "orchestration_overhead_ms",
               "barge_in_reaction_ms")


def ordered_metrics(result: RunResult) -> list[str]:
    names = result.metric_names()
    first = [m for m in KEY_METRICS if m in names]
    return first + [m for m in names if m not in first]


def latency_table(result: RunResult) -> str:
    rows = []
    for m in ordered_metrics(result):
        s = summarize(result.values(m))
        rows.append([m, int(s["count"]), *(s[f"p{q}"] for q in PERCENTILES), s["max"]])
    return table(["metric", "n", *(f"p{q}" for q in PERCENTILES), "max"], rows)


def concurrency_table(result: RunResult) -> str:
    groups = by_concurrency(result.turns, result.primary_metric)
    rows = [[c, int(s["count"]), s["p50"], s["p95"], s["p99"]] for c, s in groups.items()]
    return table(["live sessions", "turns", "p50", "p95", "p99"], rows)


def markdown(result: RunResult, extra: str = "") -> str:
    data = result.to_dict()
    codes = ", ".join(f"{k}: {v}" for k, v in sorted(data["sessions_by_code"].items())) or "none"
    lines = [
        f"# voxgrid load test: {result.mode} mode against {result.target}", "",
        f"- sessions wanted: {result.sessions_wanted}, ran {result.duration_s:.1f} s",
        f"- turns measured: {len(result.turns)} ({sum(1 for t in result.turns if t.interrupted)} interrupted, "
        f"{sum(1 for t in result.turns if t.metrics.get('no_reply'))} without reply)",
        f"- sessions by gRPC code: {codes} (error rate {100 * result.error_rate():.1f} %)",
        "", "## Latency (ms)", "", latency_table(result), "",
        f"## {result.primary_metric} versus live sessions (ms)", "", concurrency_table(result), "",
    ]
    if result.rtf:
        lines += ["## Real-time factor per service (from /metrics)", "",
                  table(["service", "mean RTF"], [[k, v] for k, v in sorted(result.rtf.items())]), ""]
    failures = [s for s in result.sessions if s.code != "OK"]
    if failures:
        lines += ["## Failed sessions", "", table(
            ["session", "code", "turns", "message"],
            [[s.session, s.code, s.turns, s.message[:100]] for s in failures[:20]]),
            ""]
    if result.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in result.notes), ""]
    if extra:
        lines += [extra, ""]
    lines += ["![latency CDF](latency_cdf.png)", "", "![latency versus concurrency](latency_vs_concurrency.png)", ""]
    return "\n".join(lines)


def plot_cdf(result: RunResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in [m for m in ordered_metrics(result) if m.endswith("_ms")][:6]:
        v = np.sort(np.asarray(result.values(m)))
        if len(v):
            ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=m.removesuffix("_ms"))
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction of turns")
    ax.set_title(f"Latency CDF ({result.mode}, {result.sessions_wanted} sessions)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_vs_concurrency(points: dict[int, dict[str, float]], metric: str, path: Path,
                        slo_ms: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = sorted(points)
    for q in ("p50", "p95", "p99"):
        ax.plot(xs, [points[x][q] for x in xs], marker="o", label=q)
    if slo_ms:
        ax.axhline(slo_ms, color="red", linestyle="--", label=f"SLO {slo_ms:.0f} ms")
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel(f"{metric.removesuffix('_ms')} (ms)")
    ax.set_title("Latency versus concurrency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: RunResult, out_dir: str | Path, slo_ms: float | None = None,
                 extra_json: dict[str, Any] | None = None, extra_md: str = "",
                 concurrency_points: dict[int, dict[str, float]] | None = None) -> Path:
    """Write report.json, report.md, latency_cdf.png and latency_vs_concurrency.png; return the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {"report_format": REPORT_FORMAT, **result.to_dict()}
    if extra_json:
        data.update(extra_json)
    (out / "report.json").write_text(json.dumps(_finite(data), indent=2, default=_json_default, allow_nan=False))
    (out / "report.md").write_text(markdown(result, extra_md))
    plot_cdf(result, out / "latency_cdf.png")
    points = concurrency_points or by_concurrency(result.turns, result.primary_metric)
    plot_vs_concurrency(points, result.primary_metric, out / "latency_vs_concurrency.png", slo_ms)
    return out


def _finite(obj: Any) -> Any:
    """NaN/inf (a metric with no data) become null: report.json stays strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json_default(obj: object) -> object:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
