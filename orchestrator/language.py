"""The language of each agent turn: follow the caller's detected language where the session allows it.

STT detects each utterance's language (a multilingual model, `RecognitionConfig.language` empty); the
agent answers in it when `SessionConfig.answer_languages` allows it, the detection is sure enough and a
voice speaks it, otherwise in the session's `language`. Why here and not in the answer: the choice needs
the utterance's transcript (turn taking), tells the LLM (the answer) and swaps the TTS voice (stage
links), so it is one collaborator the three ask, not a branch in each.

The voice swap reuses the live-update path (`StageLinks.replace`): a TTS stream per other language is
opened when the session starts (off the turn's critical path), swapped in when a turn needs it, and the
stream swapped out is replaced by a fresh one in the background (a stream that was spoken on may still
carry the tail of a cancelled utterance, so it is never reused).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from voxgrid.orchestrator.routing import StageStream

from voxgrid.v1 import agent_pb2, audio_pb2, stt_pb2, tts_pb2

if TYPE_CHECKING:
    from voxgrid.orchestrator.session import PipelineSession

log = logging.getLogger("voxgrid.orchestrator.language")
R = agent_pb2
DEFAULT_LANGUAGE = "en"
DEFAULT_MIN_PROBABILITY = 0.5
_CODE = re.compile(r"^[a-z]{2,3}$")
# Names the LLM is told ("Answer in French."): whisper's most common languages; others by their code.
NAMES = {
    "en": "English", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
    "nl": "Dutch", "pl": "Polish", "ru": "Russian", "uk": "Ukrainian", "tr": "Turkish", "ar": "Arabic",
    "hi": "Hindi", "ja": "Japanese", "ko": "Korean", "zh": "Chinese", "sv": "Swedish", "da": "Danish",
    "no": "Norwegian", "fi": "Finnish", "cs": "Czech", "el": "Greek", "he": "Hebrew", "vi": "Vietnamese",
}


def check_answer_languages(config: agent_pb2.SessionConfig) -> None:
    """ValueError naming the bad entry of `answer_languages` (codes, probability range)."""
    al = config.answer_languages
    for code in [*al.allowed, *al.voices]:
        if not _CODE.match(code):
            raise ValueError(f"answer_languages: {code!r} is not an ISO 639-1 code such as \"fr\" (lower case)")
    if al.HasField("min_probability") and not 0 <= al.min_probability <= 1:
        raise ValueError(f"answer_languages.min_probability {al.min_probability:g} is out of range [0, 1]")


def detects(config: agent_pb2.SessionConfig) -> bool:
    """Whether STT should detect the caller's language (RecognitionConfig.language left empty)."""
    return bool(config.answer_languages.allowed) or (config.HasField("language") and not config.language)


def voice_for(code: str, config: agent_pb2.SessionConfig, voice_languages: dict[str, tuple[str, ...]]) -> str | None:
    """The voice that speaks `code`: the session's own for its language, an explicit entry, else a TTS voice
    listing the language (e.g. "fr-fr"); None when no voice does."""
    if code == session_language(config):
        return config.voice
    if code in config.answer_languages.voices:
        return config.answer_languages.voices[code]
    for name, langs in sorted(voice_languages.items()):
        if any(lang == code or lang.startswith(code + "-") for lang in langs):
            return name
    return None


def session_language(config: agent_pb2.SessionConfig) -> str:
    return config.language or DEFAULT_LANGUAGE


@dataclass
class _Voice:
    code: str
    request: tts_pb2.SynthesizeRequest
    stream: StageStream | None = None  # open and unused, ready to be swapped in


class TurnLanguage:
    """Chooses each turn's language and keeps a TTS stream ready for each language the agent may switch to."""

    def __init__(self, session: PipelineSession) -> None:
        self.s = session
        config = session.config
        self.enabled = detects(config)
        self.default = session_language(config)
        al = config.answer_languages
        self.allowed = set(al.allowed)
        self.min_probability = al.min_probability if al.HasField("min_probability") else DEFAULT_MIN_PROBABILITY
        self.speaking = self.default  # the language of the TTS stream in use
        self.voice = config.voice  # and its voice
        self._voices: dict[str, _Voice] = {}  # other languages that have a voice
        self._no_voice: set[str] = set()
        self._heard: stt_pb2.Transcript | None = None

    @property
    def stt_language(self) -> str:
        """RecognitionConfig.language: empty (detect) when the session follows or reports the caller's language."""
        return "" if self.enabled else self.s.config.language

    async def open(self) -> None:
        """At session start (after the stage streams): a ready TTS stream for each allowed language with a voice
        (the session language's stream is the one in use)."""
        config = self.s.config
        others = self.allowed - {self.default}
        voice_languages: dict[str, tuple[str, ...]] = {}
        if others - set(config.answer_languages.voices):  # languages whose voice the TTS replicas must name
            listed = await self.s.links.pool("tts").unary("ListVoices", audio_pb2.ListModelsRequest())
            voice_languages = {m.name: tuple(m.languages) for m in listed.models}
        for code in sorted(others):
            voice = voice_for(code, config, voice_languages)
            if voice is None:
                self._no_voice.add(code)
                continue
            cfg = tts_pb2.SynthesisConfig()
            cfg.CopyFrom(self.s.links.tts_config)
            cfg.voice, cfg.language = voice, code
            self._voices[code] = _Voice(code, tts_pb2.SynthesizeRequest(config=cfg))
        if not self._voices:
            return
        self._voices[self.default] = _Voice(self.default, tts_pb2.SynthesizeRequest(config=self.s.links.tts_config))
        for entry in self._voices.values():
            if entry.code != self.speaking:
                entry.stream = await self._open(entry.request)

    async def _open(self, request: tts_pb2.SynthesizeRequest) -> StageStream:
        return await self.s.links.pool("tts").open("StreamingSynthesize", request)

    def close(self) -> None:
        for entry in self._voices.values():
            if entry.stream is not None:
                entry.stream.close()
                entry.stream = None

    def heard(self, transcript: stt_pb2.Transcript) -> None:
        """The utterance the next turn answers (a final or STT's preview of it)."""
        self._heard = transcript

    def choose(self, turn_in_flight: bool) -> agent_pb2.LanguageChoice | None:
        """The language of the turn about to start, with the TTS voice swapped to it; None when the session
        neither follows nor reports the caller's language."""
        heard, self._heard = self._heard, None
        if not self.enabled:
            return None
        choice = agent_pb2.LanguageChoice()
        if heard is not None and heard.language:
            choice.detected = heard.language
            if heard.HasField("language_probability"):
                choice.probability = heard.language_probability
        wanted, reason = self._wanted(choice)
        if wanted != self.speaking and not self._swap(wanted, turn_in_flight):
            wanted, reason = self.speaking, R.ANSWER_LANGUAGE_REASON_VOICE_NOT_READY
        choice.answered, choice.reason = wanted, reason
        choice.voice = self.voice
        return choice

    def _wanted(self, choice: agent_pb2.LanguageChoice) -> tuple[str, int]:
        code = choice.detected
        if not code or not choice.HasField("probability"):
            return self.default, R.ANSWER_LANGUAGE_REASON_NOT_DETECTED
        if code == self.default:
            return self.default, R.ANSWER_LANGUAGE_REASON_SESSION_LANGUAGE
        if code not in self.allowed:
            return self.default, R.ANSWER_LANGUAGE_REASON_NOT_ALLOWED
        if choice.probability < self.min_probability:
            return self.default, R.ANSWER_LANGUAGE_REASON_UNSURE
        if code in self._no_voice:
            return self.default, R.ANSWER_LANGUAGE_REASON_NO_VOICE
        return code, R.ANSWER_LANGUAGE_REASON_FOLLOWED_CALLER

    def _swap(self, code: str, turn_in_flight: bool) -> bool:
        """Make `code`'s ready stream the session's TTS stream (False when there is none now); the stream it
        replaces is closed and a fresh one for its language is opened in the background."""
        entry = self._voices.get(code)
        if turn_in_flight or entry is None or entry.stream is None:
            return False
        stream, entry.stream = entry.stream, None
        leaving, self.speaking, self.voice = self.speaking, code, entry.request.config.voice
        self.s.links.replace("tts", stream, entry.request)
        self.s.speech.tts_draining = False  # a new stream: nothing of a cancelled utterance will arrive
        self.s.spawn(self._reopen(leaving))
        return True

    async def _reopen(self, code: str) -> None:
        try:
            stream = await self._open(self._voices[code].request)
        except Exception as exc:  # a stream that cannot open only means no switch to its language
            log.warning("session %s: no TTS stream for language %s: %s", self.s.session_id, code, exc)
            return
        self.s.post("language_stream", (code, stream))

    def _on_stream(self, payload: tuple[str, StageStream]) -> None:
        code, stream = payload
        if self.s.closed or self.speaking == code:
            stream.close()
        else:
            self._voices[code].stream = stream

    def handlers(self) -> dict[str, Callable[[Any], None]]:
        return {"language_stream": self._on_stream}


def instruction(choice: agent_pb2.LanguageChoice | None) -> str:
    """The system line that tells the LLM the turn's language ("" when the session does not switch)."""
    if choice is None or not choice.answered:
        return ""
    return f"Answer in {NAMES.get(choice.answered, choice.answered)}."
