"""faster-whisper in float16 on a CUDA GPU: batched decodes, and streaming sessions over loopback gRPC.

Run by `make test-gpu` in .venv-gpu, with pip's cuBLAS on LD_LIBRARY_PATH (CTranslate2 loads it itself).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from voxgrid.services.stt.app import SttRuntime
from voxgrid.services.stt.client import audio_chunks, recognize
from voxgrid.services.stt.engines.base import DecodeRequest
from voxgrid.services.stt.engines.faster_whisper import FasterWhisperEngine
from voxgrid.services.stt.settings import SttSettings

from tests.stt.conftest import at_16k, with_silence, word_error_rate
from voxgrid.audio import pcm16_spec
from voxgrid.client import channel
from voxgrid.server.chassis import start_server
from voxgrid.v1 import stt_pb2, stt_pb2_grpc

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
SESSIONS = 8


@pytest.fixture(scope="module")
def cuda_engine() -> FasterWhisperEngine:
    import ctranslate2

    if ctranslate2.get_cuda_device_count() == 0:
        pytest.fail("an NVIDIA GPU is present but CTranslate2 sees no CUDA device: run `make test-gpu` "
                    "(it puts pip's cuBLAS on LD_LIBRARY_PATH: python -m voxgrid.gpu --cuda-lib-path)")
    engine = FasterWhisperEngine(device="cuda", compute_type="float16")
    engine.load()
    return engine


@pytest.fixture
async def cuda_server(cuda_engine: FasterWhisperEngine) -> AsyncIterator[tuple[str, SttRuntime]]:
    settings = SttSettings(host="127.0.0.1", port=0, max_sessions=SESSIONS * 2, device="cuda",
                           compute_type="float16", max_batch_size=SESSIONS * 2)
    runtime = SttRuntime(settings, engine=cuda_engine)
    async with start_server(runtime, settings) as server:
        await server.wait_ready()
        yield server.address, runtime


def test_float16_batch_on_cuda(cuda_engine: FasterWhisperEngine, booking_speech) -> None:
    samples, rate, _ = booking_speech
    audio = at_16k(samples, rate)
    hyps = cuda_engine.decode([DecodeRequest(audio, final=True)] * 16 + [DecodeRequest(audio)] * 16)
    assert len(hyps) == 32 and all("table" in h.text.lower() for h in hyps)
    assert hyps[0].words and not hyps[-1].words
    assert cuda_engine.info().properties == {"device": "cuda", "compute_type": "float16",
                                             "window_quantum_s": str(cuda_engine.window_quantum_s)}


async def test_concurrent_realtime_streams_get_partials_and_accurate_finals(cuda_server, booking_speech) -> None:
    """Real-time sessions share the GPU through the one batching scheduler; each still gets its own answer."""
    address, _ = cuda_server
    samples, rate, text = booking_speech
    audio = with_silence(at_16k(samples, rate), 16000)
    spec = pcm16_spec(16000)
    config = stt_pb2.RecognitionConfig(format=spec.to_proto(), interim_results=True)
    async with channel(address) as ch:
        stub = stt_pb2_grpc.SpeechToTextStub(ch)
        results = await asyncio.gather(*(recognize(stub, config, audio_chunks(audio, spec))
                                         for _ in range(SESSIONS)))
    for result in results:
        (final,) = result.finals()
        assert word_error_rate(text, final.text) <= 0.15, final.text
        assert result.partials() and final.words and final.latency_ms >= 0
