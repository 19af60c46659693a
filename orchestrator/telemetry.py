"""The orchestrator's metrics: per-turn latency (the record sent to the client and the Prometheus histograms, from
one place), and how its backends look from here."""

from __future__ import annotations

import asyncio
import time
from typing import Any

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
ECHO_REJECTIONS = metrics.counter(S, "echo_rejections", "Caller utterances rejected as the agent's own echo "
                                  "by the self-echo check (barge-ins not taken, turns not started).")
TOOL_CALLS = metrics.counter(S, "tool_calls", "Tool calls run, by outcome.", ["tool", "outcome"])
BACKEND_RECONNECTS = metrics.counter(S, "backend_reconnects", "Stage streams re-opened mid-session.", ["stage"])
SPECULATIONS = metrics.counter(S, "speculative_turns", "Answers prepared before the endpoint, by outcome.",
                               ["outcome"])
SESSIONS_BY_MODE = metrics.gauge(S, "sessions_by_mode", "Live sessions by mode.", ["mode"])
STAGE_SERVING_REPLICAS = metrics.gauge(S, "stage_serving_replicas",
                                       "Backend replicas of a stage whose gRPC health is SERVING.", ["stage"])
DISCOVERY_ERRORS = metrics.counter(S, "discovery_errors", "Failed backend discovery calls (the last known "
                                   "replica list stays in use), by source.", ["source"])


# What the orchestrator itself adds, measured where it happens (the latency record's overhead is a remainder).
FINE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
EVENT_LOOP_LAG = metrics.histogram(S, "event_loop_lag_seconds", "How late a timer of the orchestrator's event "
                                   "loop fires: every session and stream of the replica waits this long.",
                                   buckets=FINE_BUCKETS)
HOP = metrics.histogram(S, "hop_seconds", "A backend message's arrival (off the stage stream) to the client "
                        "message it causes (queued for the caller), by hop: stt->user_transcript, "
                        "llm->agent_text, tts->agent_audio (a turn's first audio), ...", ["hop"],
                        buckets=FINE_BUCKETS)
STAGES = frozenset(("stt", "llm", "tts"))


def hop(cause: str, arrived_at: float, response: agent_pb2.ConverseResponse) -> None:
    """`response` was caused by the `cause` event that arrived at `arrived_at`: a hop, if from a backend."""
    if cause in STAGES:
        HOP.labels(f"{cause}->{response.WhichOneof('event')}").observe(time.monotonic() - arrived_at)


async def watch_event_loop(interval_s: float = 0.05) -> None:
    """Sample the event loop's lag until cancelled: a sleep that wakes late means work queued behind
    something (a slow handler, too many sessions for one core)."""
    while True:
        start = time.monotonic()
        await asyncio.sleep(interval_s)
        EVENT_LOOP_LAG.observe(max(0.0, time.monotonic() - start - interval_s))


def observe(latency: agent_pb2.TurnLatency, mode: str = "pipeline") -> None:
    TURNS.labels(mode).inc()
    VOICE_TO_VOICE.observe(latency.voice_to_voice_ms / 1000)
    ENDPOINT_WAIT.observe(latency.endpoint_wait_ms / 1000)
    STT_FINALIZATION.observe(latency.stt_finalization_ms / 1000)
    LLM_TTFT.observe(latency.llm_time_to_first_token_ms / 1000)
    TTS_TTFA.observe(latency.tts_time_to_first_audio_ms / 1000)
    OVERHEAD.observe(max(0.0, latency.orchestration_overhead_ms) / 1000)

# Usage (orchestrator/usage.py), added once per session when it ends: the cost model's inputs.
USAGE_AUDIO = metrics.counter(S, "usage_audio_seconds", "Audio seconds by kind: caller (received), stt (sent to "
                              "STT), agent_sent, agent_played (from playback marks).", ["kind", "mode"])
USAGE_LLM_TOKENS = metrics.counter(S, "usage_llm_tokens", "LLM tokens by kind: prompt, cached_prompt, output.",
                                   ["kind", "mode"])
USAGE_TTS_CHARACTERS = metrics.counter(S, "usage_tts_characters", "Characters sent to TTS.", ["mode"])
USAGE_TOOL_SECONDS = metrics.counter(S, "usage_tool_seconds", "Time tools ran.", ["mode"])
USAGE_DUPLEX_SECONDS = metrics.counter(S, "usage_duplex_seconds", "Time duplex streams were open.", ["mode"])
USAGE_SESSION_SECONDS = metrics.counter(S, "usage_session_seconds", "Wall-clock time of ended sessions.", ["mode"])


def record_usage(total: Any, duration_s: float, mode: str) -> None:
    """A session's usage totals (usage.Counters) into the Prometheus counters."""
    for kind, value in (("caller", total.caller_audio_s), ("stt", total.stt_audio_s),
                        ("agent_sent", total.agent_audio_sent_s), ("agent_played", total.agent_audio_played_s)):
        USAGE_AUDIO.labels(kind, mode).inc(value)
    for kind, value in (("prompt", total.llm_prompt_tokens), ("cached_prompt", total.llm_cached_prompt_tokens),
                        ("output", total.llm_output_tokens)):
        USAGE_LLM_TOKENS.labels(kind, mode).inc(value)
    USAGE_TTS_CHARACTERS.labels(mode).inc(total.tts_characters)
    USAGE_TOOL_SECONDS.labels(mode).inc(total.tool_s)
    USAGE_DUPLEX_SECONDS.labels(mode).inc(total.duplex_s)
    USAGE_SESSION_SECONDS.labels(mode).inc(duration_s)
