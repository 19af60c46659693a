"""The turn-language rules (orchestrator/language.py) and how `answer_languages` merges and is checked.

The end-to-end path (real STT detection, the voice swap, the LLM told the language) is
tests/e2e/test_language_real.py; these are the decisions that need no stream.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from voxgrid.orchestrator.effective import effective_config
from voxgrid.orchestrator.language import TurnLanguage, check_answer_languages, detects, instruction, voice_for
from voxgrid.orchestrator.profiles import merge
from voxgrid.orchestrator.settings import Settings

from voxgrid.v1 import agent_pb2, stt_pb2

R = agent_pb2


def chooser(**config: object) -> TurnLanguage:
    return TurnLanguage(SimpleNamespace(config=agent_pb2.SessionConfig(**config)))  # type: ignore[arg-type]


def final(language: str, probability: float | None) -> stt_pb2.Transcript:
    tr = stt_pb2.Transcript(text="words", is_final=True, language=language)
    if probability is not None:
        tr.language_probability = probability
    return tr


@pytest.mark.parametrize(("heard", "reason"), [
    (None, R.ANSWER_LANGUAGE_REASON_NOT_DETECTED),  # typed text, greeting
    (final("en", None), R.ANSWER_LANGUAGE_REASON_NOT_DETECTED),  # an English-only STT model
    (final("en", 0.97), R.ANSWER_LANGUAGE_REASON_SESSION_LANGUAGE),
    (final("de", 0.9), R.ANSWER_LANGUAGE_REASON_NOT_ALLOWED),
    (final("fr", 0.3), R.ANSWER_LANGUAGE_REASON_UNSURE),
])
def test_the_session_language_and_why(heard: stt_pb2.Transcript | None, reason: int) -> None:
    lang = chooser(language="en", answer_languages=R.AnswerLanguages(allowed=["fr"], min_probability=0.5))
    if heard is not None:
        lang.heard(heard)
    choice = lang.choose(turn_in_flight=False)
    assert choice is not None and choice.answered == "en" and choice.reason == reason
    assert choice.detected == (heard.language if heard is not None else "")
    assert instruction(choice) == "Answer in English."


def test_an_allowed_language_without_an_open_stream_keeps_the_voice_being_spoken() -> None:
    lang = chooser(answer_languages=R.AnswerLanguages(allowed=["fr"], voices={"fr": "v"}))
    lang.heard(final("fr", 0.9))
    choice = lang.choose(turn_in_flight=False)
    assert choice is not None and choice.answered == "en"
    assert choice.reason == R.ANSWER_LANGUAGE_REASON_VOICE_NOT_READY


def test_sessions_without_answer_languages_are_unchanged() -> None:
    lang = chooser(language="en")
    lang.heard(final("fr", 0.9))
    assert lang.choose(turn_in_flight=False) is None and instruction(None) == ""
    assert lang.stt_language == "en"  # STT keeps decoding in the session language


def test_which_sessions_have_stt_detect() -> None:
    assert detects(agent_pb2.SessionConfig(answer_languages=R.AnswerLanguages(allowed=["fr"])))
    assert detects(agent_pb2.SessionConfig(language=""))  # set to "": detect
    assert not detects(agent_pb2.SessionConfig())  # unset: "en"
    assert not detects(agent_pb2.SessionConfig(language="de"))


def test_voice_for_a_language() -> None:
    config = agent_pb2.SessionConfig(voice="joe", answer_languages=R.AnswerLanguages(voices={"de": "hans"}))
    listed = {"siwis": ("fr-fr",), "joe": ("en-us",)}
    assert voice_for("en", config, listed) == "joe"
    assert voice_for("de", config, listed) == "hans"
    assert voice_for("fr", config, listed) == "siwis"  # a TTS voice that lists the language
    assert voice_for("es", config, listed) is None


def test_a_session_replaces_the_profile_answer_languages_whole() -> None:
    profile = agent_pb2.SessionConfig(answer_languages=R.AnswerLanguages(allowed=["fr", "de"], voices={"fr": "a"}))
    merged = merge(profile, agent_pb2.SessionConfig(answer_languages=R.AnswerLanguages(allowed=["es"])))
    assert list(merged.answer_languages.allowed) == ["es"] and not merged.answer_languages.voices
    off = merge(profile, agent_pb2.SessionConfig(answer_languages=R.AnswerLanguages()))
    assert off.HasField("answer_languages") and not off.answer_languages.allowed  # "never switch"
    kept = merge(profile, agent_pb2.SessionConfig())
    assert list(kept.answer_languages.allowed) == ["fr", "de"]


@pytest.mark.parametrize("bad", [
    R.AnswerLanguages(allowed=["French"]),
    R.AnswerLanguages(voices={"FR": "v"}),
    R.AnswerLanguages(allowed=["fr"], min_probability=1.5),
])
def test_bad_answer_languages_are_named(bad: agent_pb2.AnswerLanguages) -> None:
    with pytest.raises(ValueError, match="answer_languages"):
        check_answer_languages(agent_pb2.SessionConfig(answer_languages=bad))


def test_effective_language_keeps_an_explicit_empty_for_detect() -> None:
    settings = Settings()
    assert effective_config(agent_pb2.SessionConfig(), "s", settings).language == "en"
    detect = effective_config(agent_pb2.SessionConfig(language=""), "s", settings)
    assert detect.HasField("language") and detect.language == ""
