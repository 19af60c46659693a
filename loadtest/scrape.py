"""Reads the services' Prometheus /metrics before and after a run: real-time factor per service.

The RTF histograms (`voxgrid_<service>_real_time_factor`) are cumulative, so the run's own mean is
(sum_after - sum_before) / (count_after - count_before).
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

_RTF = re.compile(r"^voxgrid_(?P<service>[a-z]+)_real_time_factor$")


@dataclass
class Snapshot:
    """RTF (sum, count) per service, and every gauge/counter sample, from one scrape of each URL."""

    rtf: dict[str, tuple[float, float]] = field(default_factory=dict)
    samples: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def parse(text: str, into: Snapshot | None = None) -> Snapshot:
    snap = into or Snapshot()
    for family in text_string_to_metric_families(text):
        m = _RTF.match(family.name)
        for sample in family.samples:
            if m and sample.name.endswith("_sum"):
                s, c = snap.rtf.get(m["service"], (0.0, 0.0))
                snap.rtf[m["service"]] = (s + sample.value, c)
            elif m and sample.name.endswith("_count"):
                s, c = snap.rtf.get(m["service"], (0.0, 0.0))
                snap.rtf[m["service"]] = (s, c + sample.value)
            elif not sample.labels:
                snap.samples[sample.name] = snap.samples.get(sample.name, 0.0) + sample.value
    return snap


def _fetch(url: str, timeout_s: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return resp.read().decode()


async def scrape(urls: list[str], timeout_s: float = 3.0) -> Snapshot:
    snap = Snapshot()
    for url in urls:
        try:
            parse(await asyncio.to_thread(_fetch, url, timeout_s), snap)
        except Exception as exc:
            snap.errors.append(f"{url}: {exc}")
    return snap


def rtf_between(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Mean RTF per service over what happened between two snapshots (services with new work only)."""
    out = {}
    for service, (s1, c1) in after.rtf.items():
        s0, c0 = before.rtf.get(service, (0.0, 0.0))
        if c1 > c0:
            out[service] = (s1 - s0) / (c1 - c0)
    return out


def local_stack_metrics_urls(base_port: int,
                             services: tuple[str, ...] = ("orchestrator", "stt", "llm", "tts")) -> list[str]:
    """Metrics URLs of a `voxgrid up --base-port BASE` stack (same port plan as voxgrid.local_stack)."""
    from voxgrid.local_stack import plan

    return [f"http://127.0.0.1:{c.metrics_port}/metrics" for c in plan(list(services), base_port)]
