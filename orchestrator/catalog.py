"""What the backend stages offer (TTS voices, LLM adapters), asked once a minute, checked at session start.

A session (or its profile) naming a voice or an adapter no replica has is refused with INVALID_ARGUMENT
listing what exists, before any stream opens, instead of failing at its first answer. An LLM replica
without ListModels is not a reason to refuse: its own INVALID_ARGUMENT then surfaces when the session
opens its stream.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import grpc
from voxgrid.orchestrator.routing import BackendError, BackendPool

from voxgrid.v1 import agent_pb2, audio_pb2, llm_pb2

TTL_S = 60.0


class _Cached:
    """A set of names fetched by `fetch`, kept for TTL_S (refetched early when a name is missing)."""

    def __init__(self, fetch: Callable[[], Awaitable[set[str] | None]]) -> None:
        self._fetch = fetch
        self._at = 0.0
        self._names: set[str] | None = None

    async def get(self, want: str) -> set[str] | None:
        stale = time.monotonic() - self._at > TTL_S
        if stale or self._names is None or want not in self._names:
            self._names = await self._fetch()
            self._at = time.monotonic()
        return self._names


class BackendCatalog:
    def __init__(self, tts: BackendPool, llm: BackendPool) -> None:
        self._tts, self._llm = tts, llm
        self._voices = _Cached(self._fetch_voices)
        self._adapters = _Cached(self._fetch_adapters)
        self._hearing: tuple[str, llm_pb2.SpeechInputSpec | None] | None = None
        self._hearing_at = 0.0

    async def _fetch_voices(self) -> set[str]:
        resp = await self._tts.unary("ListVoices", audio_pb2.ListModelsRequest())
        return {m.name for m in resp.models}

    async def _fetch_adapters(self) -> set[str] | None:
        try:
            resp = await self._llm.unary("ListModels", audio_pb2.ListModelsRequest())
        except BackendError as err:
            if err.code == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise
        return {a.name for m in resp.models for a in m.adapters}

    async def speech_input(self) -> tuple[str, llm_pb2.SpeechInputSpec | None]:
        """The LLM replicas' model and how it hears (None when it cannot), from ListModels' typed capability;
        asked at most once per TTL_S, so a hybrid session start costs no round trip most of the time."""
        if self._hearing is None or time.monotonic() - self._hearing_at > TTL_S:
            try:
                resp = await self._llm.unary("ListModels", audio_pb2.ListModelsRequest())
            except BackendError as err:
                if err.code != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                resp = llm_pb2.LanguageModelList()
            hearing = next((m for m in resp.models if m.accepts_audio), None)
            name = (hearing or (resp.models[0] if resp.models else llm_pb2.LanguageModelInfo(name="?"))).name
            self._hearing = (name, hearing.speech_input if hearing is not None else None)
            self._hearing_at = time.monotonic()
        return self._hearing

    async def check(self, config: agent_pb2.SessionConfig) -> None:
        """ValueError naming the unknown voice or adapter and what the stages offer; BackendError if unreachable."""
        if config.voice:
            voices = await self._voices.get(config.voice)
            if voices is not None and config.voice not in voices:
                raise ValueError(f"voice {config.voice!r} is unknown; available: {', '.join(sorted(voices))}")
        for code, voice in sorted(config.answer_languages.voices.items()):
            voices = await self._voices.get(voice)
            if voices is not None and voice not in voices:
                raise ValueError(f"answer_languages.voices[{code!r}]: voice {voice!r} is unknown; available: "
                                 f"{', '.join(sorted(voices))}")
        if config.adapter:
            adapters = await self._adapters.get(config.adapter)
            if adapters is not None and config.adapter not in adapters:
                raise ValueError(f"adapter {config.adapter!r} is not served by the LLM replicas; adapters: "
                                 f"{', '.join(sorted(adapters)) or 'none'} (leave adapter empty for the base model)")
