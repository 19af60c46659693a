"""The orchestrator's metrics: per-turn latency (the record sent to the client and the Prometheus histograms, from
one place), and how its backends look from here."""

from __future__ import annotations

from voxgrid import metrics
from voxgrid.v1 import agent_pb2

S = "orchestrator"
VOICE_TO_VOICE = metrics.histogram(S, "voice_to_voice_seconds", "Caller's last speech audio to first agent audio.")
ENDPOINT_WAIT = metrics.histogram(S, "endpoint_wait_seconds", "Last speech audio to the STT endpoint.")
STT_FINALIZATION = metrics.histogram(S, "stt_finalization_seconds", "STT endpoint to final transcript.")
LLM_TTFT = metrics.histogram(S, "llm_time_to_first_token_seconds", "Generate sent to first token.")
TTS_TTFA = metrics.histogram(S, "tts_time_to_first_audio_seconds", "First text to TTS to its first audio.")
OVERHEAD = metrics.histogram(S, "orchestration_overhead_seconds", "Voice-to-voice minus every stage.")
BARGE_IN = metrics.histogram(S, "barge_in_reaction_seconds", "Caller speech start to agent audio stopped.")
TURNS = metrics.counter(S, "turns", "Agent turns answered.", ["mode"])
INTERRUPTIONS = metrics.counter(S, "interruptions", "Agent turns cut off by the caller.")
TOOL_CALLS = metrics.counter(S, "tool_calls", "Tool calls run, by outcome.", ["tool", "outcome"])
BACKEND_RECONNECTS = metrics.counter(S, "backend_reconnects", "Stage streams re-opened mid-session.", ["stage"])
SPECULATIONS = metrics.counter(S, "speculative_turns", "Answers prepared before the endpoint, by outcome.",
                               ["outcome"])
SESSIONS_BY_MODE = metrics.gauge(S, "sessions_by_mode", "Live sessions by mode.", ["mode"])
STAGE_SERVING_REPLICAS = metrics.gauge(S, "stage_serving_replicas",
                                       "Backend replicas of a stage whose gRPC health is SERVING.", ["stage"])
DISCOVERY_ERRORS = metrics.counter(S, "discovery_errors", "Failed backend discovery calls (the last known "
                                   "replica list stays in use), by source.", ["source"])


def observe(latency: agent_pb2.TurnLatency, mode: str = "pipeline") -> None:
    TURNS.labels(mode).inc()
    VOICE_TO_VOICE.observe(latency.voice_to_voice_ms / 1000)
    ENDPOINT_WAIT.observe(latency.endpoint_wait_ms / 1000)
    STT_FINALIZATION.observe(latency.stt_finalization_ms / 1000)
    LLM_TTFT.observe(latency.llm_time_to_first_token_ms / 1000)
    TTS_TTFA.observe(latency.tts_time_to_first_audio_ms / 1000)
    OVERHEAD.observe(max(0.0, latency.orchestration_overhead_ms) / 1000)
