"""The one metrics module: every Prometheus metric voxgrid exports is created through here.

Names follow `voxgrid_<service>_<name>`; latencies are seconds in histograms sharing one bucket layout
(5 ms to 10 s) so dashboards and SLO rules can compare stages. Metrics are process-wide and created once:
calling a factory again with the same name returns the existing collector, so several servers (or
tests) in one process share them instead of failing on duplicate registration.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0,
    1.25, 1.5, 2.0, 3.0, 5.0, 10.0,
)
RTF_BUCKETS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)

_lock = threading.Lock()
_collectors: dict[str, Any] = {}
C = TypeVar("C", Counter, Gauge, Histogram)


def _metric(kind: type[C], service: str, name: str, doc: str, labels: Sequence[str], **kw: Any) -> C:
    full = f"voxgrid_{service}_{name}"
    with _lock:
        existing = _collectors.get(full)
        if existing is None:
            existing = kind(full, doc, labelnames=tuple(labels), registry=REGISTRY, **kw)
            _collectors[full] = existing
        elif not isinstance(existing, kind):
            raise TypeError(f"metric {full} already exists as {type(existing).__name__}")
        return existing


def histogram(
    service: str, name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
) -> Histogram:
    return _metric(Histogram, service, name, doc, labels, buckets=tuple(buckets))


def counter(service: str, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
    return _metric(Counter, service, name, doc, labels)


def gauge(service: str, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
    return _metric(Gauge, service, name, doc, labels)


def rtf_histogram(service: str) -> Histogram:
    """Compute time / audio time of each unit of work; < 1 means faster than real time."""
    return histogram(service, "real_time_factor", "Compute seconds per second of audio.", buckets=RTF_BUCKETS)


class ServiceMetrics:
    """What the chassis records for every service: sessions, capacity, errors by gRPC code."""

    def __init__(self, service: str) -> None:
        self.active_sessions = gauge(service, "active_sessions", "Streams being served now.")
        self.session_capacity = gauge(service, "session_capacity", "Streams this replica accepts at most.")
        self.sessions = counter(service, "sessions", "Streams accepted.")
        self.session_seconds = histogram(
            service, "session_duration_seconds", "Length of finished streams.",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
        )
        self.errors = counter(service, "errors", "Streams and calls that ended with an error status.", ["code"])
        self.draining = gauge(service, "draining", "1 while the replica drains after SIGTERM.")
        self.event_loop_tasks = gauge(
            service, "event_loop_tasks",
            "asyncio tasks alive on the replica's event loop; steady growth under steady load is a leak.")
