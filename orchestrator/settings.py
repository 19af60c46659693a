"""Orchestrator settings: where the backends are, and the defaults a session config can override."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from voxgrid.config import ServerSettings


class Settings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="VOXGRID_ORCHESTRATOR_", extra="forbid")

    port: int = Field(50051, ge=0, le=65535, description="gRPC port of the Agent service; 0 picks a free one.")
    max_sessions: int = Field(200, ge=1, description="Concurrent conversations this replica runs.")
    stt_backends: str = Field(
        "", description="STT replicas: `static:host:port,...`, `dns:NAME:PORT` (every address of a headless "
        "Service) or `k8s:NAMESPACE/SERVICE:PORT` (EndpointSlice watch).")
    llm_backends: str = Field("", description="LLM replicas, same forms as stt_backends.")
    tts_backends: str = Field("", description="TTS replicas, same forms as stt_backends.")
    duplex_backends: str = Field("", description="Duplex (Moshi) replicas, same forms; empty disables duplex mode.")
    backend_token: str = Field("", description="Bearer token the orchestrator presents to its backends.")
    connect_timeout_s: float = Field(5.0, gt=0, description="How long opening a backend stream may take.")
    dns_refresh_s: float = Field(5.0, gt=0, description="How often dns: backends are re-resolved.")
    health_check_interval_s: float = Field(
        2.0, gt=0, description="How often the gRPC health of every backend replica is checked. The orchestrator "
        "is SERVING only while each pipeline stage (stt, llm, tts) has a SERVING replica; health names "
        "`voxgrid.v1.Agent/<stage>` tell which stage is missing.")
    default_system_prompt: str = Field(
        "You are a helpful voice assistant. Answer in one or two short spoken sentences, without lists or "
        "markdown.", description="Persona used when a session sets none.")
    max_history_tokens: int = Field(2048, ge=64, description="Default token budget of the rolling history.")
    max_tokens: int = Field(120, ge=1, description="Default cap on tokens per agent answer.")
    knowledge_dir: Path | None = Field(
        None, description="Folder of text documents for the knowledge tool; each subfolder is a collection, "
        "files directly inside form the collection `default`.")
    profiles_file: Path | None = Field(
        None, description="Agent profiles (YAML or JSON): {name: {description, then SessionConfig fields in "
        "protobuf JSON: systemPrompt, greeting, voice, speed, adapter, language, mode, tools, turnTaking, "
        "endpointing, edgeAudio, ...}}; a session picks one by SessionConfig.profile and overrides it field by "
        "field. Checked at start, re-read when it changes (new sessions get the new profiles). In the chart: the "
        "`profiles` value, mounted from a ConfigMap.")
    default_profile: str = Field("", description="Profile of a session that names none; empty = none.")
    playout_lead_ms: int = Field(
        300, ge=0, description="How far ahead of real-time playback agent audio is sent: less makes barge-in "
        "stop sooner, more absorbs network jitter.")
    tts_first_chunk_chars: int = Field(
        16, ge=0, description="The agent starts speaking at the first clause or at the first word boundary past "
        "this many characters of the answer, whichever comes first (0 = the TTS replica's default). Small "
        "values cut first-audio latency when the LLM writes slower than a whole clause per 100 ms.")
    first_audio_after_ms: int = Field(
        120, ge=0, description="First audio by time: this long after the answer's first token, the whole words "
        "written so far are spoken as the first phrase (at least first_audio_min_words), even if the LLM has not "
        "reached a clause or tts_first_chunk_chars yet; the rest follows at clauses. 0 = by characters only "
        "(the TTS replica cuts the first chunk).")
    first_audio_min_words: int = Field(
        3, ge=1, description="Whole words the first phrase needs before it is spoken (by time or characters); "
        "two-word phrases measured worse intelligibility.")
    speculative_turns: bool = Field(
        True, description="Start the answer on STT's speculative preview (the caller fell silent, the endpoint "
        "has not fired yet) and release its audio at the endpoint; wasted LLM/TTS work when the caller resumes.")
    max_utterance_audio_s: float = Field(
        30.0, gt=0, description="Hybrid mode: the longest stretch of one caller utterance sent to the speech-in "
        "LLM (also bounded by the model's own max audio); the session keeps this much of the caller's recent "
        "audio. A longer utterance is answered from its last part, with a notice.")
    reconnect_attempts: int = Field(2, ge=0, description="Times a session re-opens a lost backend stage.")
    # Bounds on what one caller can make the LLM work through (orchestrator/limits.py).
    max_user_text_chars: int = Field(
        4000, ge=1, description="Longest typed user turn (ConverseRequest.text), characters; a longer one is "
        "refused in-band (SessionNotice INVALID_ARGUMENT, stage `input`) and the call goes on.")
    max_transcript_chars: int = Field(
        4000, ge=1, description="Longest utterance transcript answered as one turn, characters; a longer one is "
        "refused in-band like a long typed turn.")
    max_tool_result_chars: int = Field(
        2000, ge=1, description="Longest tool result put in the context, characters; the rest is cut and a "
        "`[tool result truncated: ...]` marker says so.")
    control_per_s: float = Field(
        5.0, gt=0, description="Control and text messages one session may send per second (token bucket); "
        "more are refused in-band, one by one.")
    control_burst: int = Field(20, ge=1, description="Control and text messages one session may send at once.")
    text_chars_per_s: float = Field(
        400.0, gt=0, description="Typed characters one session may send per second (token bucket).")
    text_chars_burst: int = Field(
        8000, ge=1, description="Typed characters one session may send at once; keep it at least "
        "max_user_text_chars so the largest allowed turn passes.")
