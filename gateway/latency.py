"""Voice-to-voice as the caller's side of the gateway sees it.

The orchestrator measures from the arrival of the caller's last speech audio at the orchestrator to its
first agent audio leaving it. The gateway adds a hop each way, so it measures the same interval on its own
clock: when did the caller audio at the speech-end offset reach the gateway, and when did the turn's first
agent audio get written to the socket. The speech-end offset comes from the orchestrator's events: the
endpoint (USER_STOPPED_SPEAKING's stream offset) minus the silence the endpointer waited for
(TurnLatency.endpoint_wait_ms); the orchestrator sends that record after the turn's first audio.
"""

from __future__ import annotations

import bisect
import time

from voxgrid.audio import AudioSpec
from voxgrid.v1 import agent_pb2

TE = agent_pb2.TurnEvent


class EdgeClock:
    """Arrival times of the caller's audio by stream offset, and the first agent audio of each turn."""

    def __init__(self, spec: AudioSpec, keep_s: float = 60.0) -> None:
        self.spec = spec
        self.received_ms = 0.0
        self._offsets: list[float] = []  # end offset of each received frame, ms (increasing)
        self._times: list[float] = []
        self._keep_ms = keep_s * 1000
        self._stopped_offset_ms: float | None = None
        self._first_sent: dict[int, tuple[float, float | None]] = {}

    def received(self, n_bytes: int, at: float | None = None) -> None:
        self.received_ms += self.spec.duration_ms(n_bytes)
        self._offsets.append(self.received_ms)
        self._times.append(time.monotonic() if at is None else at)
        if self._offsets[0] < self.received_ms - 2 * self._keep_ms:  # bounded memory on long calls
            cut = bisect.bisect_left(self._offsets, self.received_ms - self._keep_ms)
            del self._offsets[:cut], self._times[:cut]

    def arrival_of(self, offset_ms: float) -> float | None:
        """When the frame holding stream offset `offset_ms` arrived (None if forgotten or not yet)."""
        i = bisect.bisect_left(self._offsets, offset_ms)
        return self._times[i] if i < len(self._times) else None

    def observe(self, response: agent_pb2.ConverseResponse) -> None:
        if response.WhichOneof("event") == "turn_event" and response.turn_event.kind == TE.KIND_USER_STOPPED_SPEAKING:
            self._stopped_offset_ms = float(response.turn_event.audio_offset_ms)

    def audio_sent(self, turn_id: int, at: float | None = None) -> None:
        """The turn's audio was written to the socket; only the first call per turn counts."""
        if turn_id not in self._first_sent:
            self._first_sent[turn_id] = (time.monotonic() if at is None else at, self._stopped_offset_ms)
            self._stopped_offset_ms = None  # a later typed or greeting turn has no speech end of its own

    def voice_to_voice_s(self, latency: agent_pb2.TurnLatency) -> float | None:
        """Edge voice-to-voice of the turn this record describes, or None (greeting, typed turn, no audio)."""
        sent_at, stopped = self._first_sent.pop(latency.turn_id, (None, None))
        if sent_at is None or stopped is None:
            return None
        arrived = self.arrival_of(max(0.0, stopped - latency.endpoint_wait_ms))
        return None if arrived is None else max(0.0, sent_at - arrived)
