"""The agent follows the caller's language, end to end with real services over loopback gRPC.

STT is the multilingual whisper base (packaged), the LLM the packaged Qwen2.5 0.5B, TTS Piper (its one
packaged voice is American English: there is no French voice, so a profile that allows French without
naming a voice falls back to English and the turn record says why; a session that names a voice for
French gets French answers spoken by it). French speech comes from espeak-ng, English from flite.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import pytest_asyncio
import soxr
from voxgrid.orchestrator.client import AgentCall, session_config

from tests.conftest import synthesize_speech
from tests.real_stack import real_agent_stack
from voxgrid.client import channel
from voxgrid.speech import EspeakMissing, synthesize_espeak
from voxgrid.v1 import agent_pb2, agent_pb2_grpc, audio_pb2, tts_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
RATE = 16000
R = agent_pb2
FRENCH_WORDS = {"je", "vous", "le", "la", "les", "de", "des", "une", "un", "est", "pour", "ce", "bonjour", "oui"}
FRENCH = "Bonjour, je voudrais réserver une table pour deux personnes ce soir à huit heures."


def french() -> np.ndarray:
    try:
        x, rate = synthesize_espeak(FRENCH, "fr")
    except EspeakMissing as exc:
        pytest.skip(str(exc))
    return soxr.resample(x, rate, RATE).astype("float32")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory):
    profiles = tmp_path_factory.mktemp("profiles") / "profiles.yaml"
    profiles.write_text(json.dumps({"bilingual": {
        "description": "English agent that may answer in French",
        "language": "en", "answerLanguages": {"allowed": ["fr"]}}}))
    async with real_agent_stack(stt_model="base-package", max_tokens=30, profiles_file=profiles) as (orch, backends), \
            channel(orch.address) as ch, channel(backends["tts"].address) as tts_ch:
        voices = await tts_pb2_grpc.TextToSpeechStub(tts_ch).ListVoices(audio_pb2.ListModelsRequest())
        yield agent_pb2_grpc.AgentStub(ch), voices.models[0].name


async def ask(call: AgentCall, x: np.ndarray) -> agent_pb2.TurnLatency:
    """Say `x`; the latency record of the agent turn that answers it, once that turn is over."""
    before = len(call.record.of("latency"))

    def answered() -> bool:
        records = call.record.of("latency")
        return len(records) > before and call.turn_over(records[-1].turn_id)(call.record)

    await call.stream(x, RATE, realtime=False)
    await call.silence(120, until=lambda: answered() or call.done.is_set())
    assert call.error is None, call.error
    assert answered(), "the agent did not answer"
    return call.record.of("latency")[-1]


@pytest.mark.asyncio(loop_scope="module")
async def test_french_without_a_french_voice_falls_back_to_the_profile_language(stack) -> None:
    stub, _ = stack
    async with AgentCall(stub, session_config(profile="bilingual")) as call:
        started = await call.wait_started()
        assert list(started.config.answer_languages.allowed) == ["fr"]
        choice = (await ask(call, french())).language_choice
    assert choice.detected == "fr" and choice.probability > 0.5, choice
    assert choice.answered == "en" and choice.reason == R.ANSWER_LANGUAGE_REASON_NO_VOICE, choice


@pytest.mark.asyncio(loop_scope="module")
async def test_agent_answers_in_french_with_the_french_voice_then_back_in_english(stack, speech_dir) -> None:
    stub, voice = stack
    # The session names a voice for French (Piper's English voice: the only one there is), overriding the profile.
    config = session_config(profile="bilingual", answer_languages=R.AnswerLanguages(
        allowed=["fr"], voices={"fr": voice}), sampling=audio_pb2.SamplingParams(temperature=0.0))
    english, rate = synthesize_speech("What is the capital of Germany?", speech_dir / "germany.wav")
    async with AgentCall(stub, config) as call:
        first = (await ask(call, french())).language_choice
        first_turn = call.record.of("latency")[-1].turn_id
        second = (await ask(call, soxr.resample(english, rate, RATE).astype("float32"))).language_choice
        french_audio = call.record.agent_audio(call.out_spec, first_turn)
        french_text = call.record.agent_text(first_turn)
    assert first.detected == "fr" and first.probability > 0.5, first
    assert (first.answered, first.voice, first.reason) == ("fr", voice, R.ANSWER_LANGUAGE_REASON_FOLLOWED_CALLER)
    assert len(french_audio) > RATE // 2  # the swapped-in stream spoke the answer
    # The LLM was told the turn's language ("Answer in French."): its answer is French.
    assert set(french_text.lower().replace(",", " ").replace(".", " ").split()) & FRENCH_WORDS, french_text
    assert second.detected == "en" and second.answered == "en", second
    assert second.reason == R.ANSWER_LANGUAGE_REASON_SESSION_LANGUAGE


@pytest.mark.asyncio(loop_scope="module")
async def test_an_unknown_voice_for_a_language_is_refused_before_the_call(stack) -> None:
    stub, _ = stack
    config = session_config(answer_languages=R.AnswerLanguages(allowed=["fr"], voices={"fr": "no-such-voice"}))
    async with AgentCall(stub, config) as call:
        await call.done.wait()
    assert call.error is not None and "no-such-voice" in str(call.error)
