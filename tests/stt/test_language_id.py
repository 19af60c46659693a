"""Language identification over loopback gRPC: the multilingual whisper base (packaged), real speech.

French and German come from espeak-ng (the espeakng-loader wheel), English from flite. An empty
`RecognitionConfig.language` means "detect": each final names the language and how sure the model is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest
from voxgrid.services.stt.app import SttRuntime
from voxgrid.services.stt.client import audio_chunks, recognize
from voxgrid.services.stt.engines.faster_whisper import FasterWhisperEngine
from voxgrid.services.stt.settings import SttSettings

from tests.conftest import synthesize_speech
from tests.stt.conftest import at_16k, with_silence
from voxgrid.audio import pcm16_spec
from voxgrid.client import channel
from voxgrid.server.chassis import start_server
from voxgrid.speech import EspeakMissing, synthesize_espeak
from voxgrid.v1 import stt_pb2, stt_pb2_grpc

pytestmark = [pytest.mark.e2e]
SPEC = pcm16_spec(16000)
FRENCH = "Bonjour, je voudrais réserver une table pour deux personnes ce soir à huit heures."
GERMAN = "Guten Tag, ich möchte bitte einen Tisch für zwei Personen heute Abend reservieren."


def espeak(text: str, voice: str) -> np.ndarray:
    try:
        samples, rate = synthesize_espeak(text, voice)
    except EspeakMissing as exc:
        pytest.skip(str(exc))
    return with_silence(at_16k(samples, rate), 16000)


@pytest.fixture(scope="module")
def base_engine() -> FasterWhisperEngine:
    engine = FasterWhisperEngine("base-package", cpu_threads=2)
    engine.load()
    return engine


@pytest.fixture
async def base_server(base_engine: FasterWhisperEngine) -> AsyncIterator[str]:
    settings = SttSettings(host="127.0.0.1", port=0, max_sessions=4)
    async with start_server(SttRuntime(settings, engine=base_engine), settings) as srv:
        await srv.wait_ready()
        yield srv.address


async def finals_of(address: str, audio: np.ndarray, language: str = "") -> list[stt_pb2.Transcript]:
    config = stt_pb2.RecognitionConfig(format=SPEC.to_proto(), language=language)
    async with channel(address) as ch:
        result = await recognize(stt_pb2_grpc.SpeechToTextStub(ch), config, audio_chunks(audio, SPEC), realtime=False)
    return [f for f in result.finals() if f.text]


@pytest.mark.parametrize(("voice", "text", "code"), [("fr", FRENCH, "fr"), ("de", GERMAN, "de")])
async def test_non_english_speech_is_identified(base_server: str, voice: str, text: str, code: str) -> None:
    finals = await finals_of(base_server, espeak(text, voice))
    assert finals, "no final transcript"
    final = finals[0]
    assert final.language == code, (final.language, final.text)
    assert final.HasField("language_probability") and 0.5 < final.language_probability <= 1.0
    # Decoded in the detected language, not translated to English.
    assert any(w in final.text.lower() for w in (("table", "personnes", "soir") if code == "fr"
                                                 else ("tisch", "personen", "abend"))), final.text


async def test_english_is_identified_and_a_given_language_is_not_detected(base_server: str, speech_dir) -> None:
    samples, rate = synthesize_speech("What time does the museum open on Sunday morning?", speech_dir / "museum.wav")
    audio = with_silence(at_16k(samples, rate), 16000)
    detected = (await finals_of(base_server, audio))[0]
    assert detected.language == "en" and detected.language_probability > 0.5, detected
    given = (await finals_of(base_server, audio, language="en"))[0]
    assert given.language == "en" and not given.HasField("language_probability")
    assert "museum" in given.text.lower()


async def test_english_only_model_reports_english_without_detection(stt_server) -> None:
    address, _ = stt_server
    finals = await finals_of(address, espeak(FRENCH, "fr"))
    assert all(f.language == "en" and not f.HasField("language_probability") for f in finals)
