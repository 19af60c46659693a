"""What a session used, counted where the work happens: the input of billing, budgets and the cost model.

Why one meter per session, fed from a few narrow points (the stage links for what is sent to STT and
TTS, the LLM's GenerationDone for tokens, the outbox for agent audio, playback marks for what was
heard, finished tool runs): every counter then has exactly one source, and a client, the Prometheus
counters and a load-test report all read the same numbers. Per-turn reports are deltas since the
previous report, so the turn reports plus the final remainder add up to the session totals exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields

from voxgrid.orchestrator import telemetry

from voxgrid.v1 import agent_pb2, llm_pb2


@dataclass
class Counters:
    caller_audio_s: float = 0.0
    stt_audio_s: float = 0.0
    agent_audio_sent_s: float = 0.0
    agent_audio_played_s: float = 0.0
    llm_requests: int = 0
    llm_prompt_tokens: int = 0
    llm_cached_prompt_tokens: int = 0
    llm_output_tokens: int = 0
    tts_characters: int = 0
    tool_calls: int = 0
    tool_s: float = 0.0
    duplex_s: float = 0.0
    turns: int = 0

    def minus(self, other: Counters) -> Counters:
        return Counters(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def to_proto(self, duration_s: float) -> agent_pb2.UsageTotals:
        # Seconds rounded to the microsecond: sums of 20 ms frames should read 9.575, not 9.574999999999884.
        values = {f.name: round(v, 6) if isinstance(v := getattr(self, f.name), float) else v for f in fields(self)}
        return agent_pb2.UsageTotals(duration_s=round(duration_s, 6), **values)


class UsageMeter:
    """The counters of one session, and its per-turn and final `UsageReport`s."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.total = Counters()
        self.started_at = time.monotonic()
        self._reported = Counters()
        self._reported_at = self.started_at
        self._sent_ms: dict[int, float] = {}  # per agent turn: audio sent, ms (caps what marks may claim)
        self._played_ms: dict[int, float] = {}  # per agent turn: the highest playback mark, ms
        self.final_sent = False

    # --- the feeding points -------------------------------------------------------------------------

    def caller_audio(self, ms: float) -> None:
        self.total.caller_audio_s += ms / 1000

    def stt_audio(self, ms: float) -> None:
        self.total.stt_audio_s += ms / 1000

    def tts_text(self, text: str) -> None:
        self.total.tts_characters += len(text)

    def agent_audio(self, turn_id: int, ms: float) -> None:
        self.total.agent_audio_sent_s += ms / 1000
        self._sent_ms[turn_id] = self._sent_ms.get(turn_id, 0.0) + ms
        self._settle_played(turn_id)

    def played(self, turn_id: int, played_ms: float) -> None:
        """A playback mark: marks are cumulative per turn, so only a turn's highest one counts."""
        self._played_ms[turn_id] = max(self._played_ms.get(turn_id, 0.0), played_ms)
        self._settle_played(turn_id)

    def _settle_played(self, turn_id: int) -> None:
        # A mark never counts more than was sent of its turn (a client's clock may run ahead).
        self.total.agent_audio_played_s = sum(min(p, self._sent_ms.get(t, 0.0))
                                              for t, p in self._played_ms.items()) / 1000

    def llm_done(self, done: llm_pb2.GenerationDone) -> None:
        t = self.total
        t.llm_requests += 1
        t.llm_prompt_tokens += done.prompt_tokens
        t.llm_cached_prompt_tokens += done.cached_prompt_tokens
        t.llm_output_tokens += done.completion_tokens

    def tool_run(self, seconds: float) -> None:
        self.total.tool_calls += 1
        self.total.tool_s += seconds

    def duplex(self, seconds: float) -> None:
        self.total.duplex_s += seconds

    # --- reports ------------------------------------------------------------------------------

    def turn_report(self, turn_id: int) -> agent_pb2.ConverseResponse:
        """An agent turn ended: what was used since the previous report."""
        self.total.turns += 1
        now = time.monotonic()
        delta = self.total.minus(self._reported)
        report = agent_pb2.UsageReport(turn_id=turn_id, usage=delta.to_proto(now - self._reported_at))
        self._reported = Counters(**{f.name: getattr(self.total, f.name) for f in fields(self.total)})
        self._reported_at = now
        return agent_pb2.ConverseResponse(usage=report)

    def final_report(self) -> agent_pb2.ConverseResponse:
        """The session's totals, once; also exported as Prometheus counters."""
        self.final_sent = True
        duration = time.monotonic() - self.started_at
        telemetry.record_usage(self.total, duration, self.mode)
        return agent_pb2.ConverseResponse(usage=agent_pb2.UsageReport(final=True,
                                                                      usage=self.total.to_proto(duration)))
