"""The gateway's call admission and call metrics: the WebSocket counterpart of the chassis' SessionGate.

A socket is a call from the moment it is admitted until its orchestrator session is closed. Past
`max_sessions`, or while draining, a socket is accepted only to be closed at once with a code and a reason
a client (or an operator reading a provider's logs) can act on.
"""

from __future__ import annotations

import time

from voxgrid import metrics
from voxgrid.server.admission import Admission

SERVICE = "gateway"
# WebSocket close codes the gateway uses (RFC 6455 section 7.4.1; 4000-4999 are application codes).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_BAD_PAYLOAD = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_RESTARTING = 1012
CLOSE_TRY_AGAIN = 1013
CLOSE_IDLE = 4408
CLOSE_AGENT_UNAVAILABLE = 4503


class GatewayMetrics:
    """voxgrid_gateway_*: calls by kind (browser, phone), failures by reason, voice-to-voice at the edge."""

    def __init__(self) -> None:
        self.active_calls = metrics.gauge(SERVICE, "active_calls", "Calls in progress.", ["kind"])
        self.call_capacity = metrics.gauge(SERVICE, "call_capacity", "Calls this replica accepts at most.")
        self.calls = metrics.counter(SERVICE, "calls", "Calls admitted.", ["kind"])
        self.refused = metrics.counter(SERVICE, "refused_calls", "Sockets refused (full, draining, auth).",
                                       ["reason"])
        self.errors = metrics.counter(SERVICE, "errors", "Calls that ended on an error, by cause.", ["kind", "cause"])
        self.call_seconds = metrics.histogram(SERVICE, "call_duration_seconds", "Length of finished calls.",
                                              ["kind"], buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600))
        self.voice_to_voice = metrics.histogram(
            SERVICE, "voice_to_voice_seconds", "Caller's last speech audio received by the gateway to the agent's "
            "first audio written to the socket.", ["kind"])
        self.interruptions = metrics.counter(SERVICE, "interruptions", "Agent turns cut off by the caller.",
                                             ["kind"])
        self.draining = metrics.gauge(SERVICE, "draining", "1 while the gateway drains after SIGTERM.")


class CallGate(Admission):
    """Counts live calls against the limit; draining refuses new ones and waits for the live ones."""

    def __init__(self, max_calls: int, gm: GatewayMetrics) -> None:
        super().__init__(max_calls)
        self.max_calls = max_calls
        self.metrics = gm
        gm.call_capacity.set(max_calls)

    def refusal(self) -> tuple[int, str] | None:
        """Why a new call cannot start now (close code, reason), or None."""
        if self.draining:
            return CLOSE_RESTARTING, "gateway is shutting down: reconnect to another replica"
        if self.full:
            return CLOSE_TRY_AGAIN, f"gateway is full ({self.max_calls} calls): try again shortly"
        return None

    def enter_call(self, kind: str) -> float:
        self.enter()
        self.metrics.active_calls.labels(kind).inc()
        self.metrics.calls.labels(kind).inc()
        return time.monotonic()

    def leave_call(self, kind: str, started: float) -> None:
        self.leave()
        self.metrics.active_calls.labels(kind).dec()
        self.metrics.call_seconds.labels(kind).observe(time.monotonic() - started)
