"""Client side of StreamingRecognize: stream audio (at real-time pace or as fast as possible), collect results.

Used by `voxgrid transcribe`, the e2e tests and the benchmark, so all three speak to the server the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from voxgrid.audio import AudioSpec, encode
from voxgrid.v1 import stt_pb2, stt_pb2_grpc


@dataclass
class Received:
    response: stt_pb2.RecognizeResponse
    at: float  # perf_counter when it arrived
    sent_audio_ms: float  # audio the client had sent by then


@dataclass
class StreamResult:
    received: list[Received] = field(default_factory=list)
    audio_done_at: float = 0.0  # when the last audio chunk was sent

    def finals(self) -> list[stt_pb2.Transcript]:
        return [r.response.transcript for r in self.received
                if r.response.WhichOneof("result") == "transcript" and r.response.transcript.is_final]

    def partials(self) -> list[stt_pb2.Transcript]:
        return [r.response.transcript for r in self.received
                if r.response.WhichOneof("result") == "transcript" and not r.response.transcript.is_final]

    def events(self) -> list[stt_pb2.SpeechEvent]:
        return [r.response.speech_event for r in self.received if r.response.WhichOneof("result") == "speech_event"]

    @property
    def text(self) -> str:
        return " ".join(t.text for t in self.finals() if t.text).strip()


def audio_chunks(samples: np.ndarray, spec: AudioSpec, chunk_ms: int = 20) -> list[bytes]:
    """Encode float32 audio at `spec`'s rate into wire chunks of `chunk_ms`."""
    n = spec.sample_rate_hz * chunk_ms // 1000
    return [encode(samples[i : i + n], spec) for i in range(0, len(samples), n)]


async def recognize(
    stub: stt_pb2_grpc.SpeechToTextStub,
    config: stt_pb2.RecognitionConfig,
    chunks: list[bytes],
    *,
    realtime: bool = True,
    chunk_ms: float = 20.0,
    end_with_control: bool = False,
    on_response: callable | None = None,  # type: ignore[valid-type]
) -> StreamResult:
    """Send config + chunks (+ half-close), gather every response until the server ends the stream."""
    result = StreamResult()
    sent_ms = 0.0

    async def requests() -> AsyncIterator[stt_pb2.RecognizeRequest]:
        nonlocal sent_ms
        yield stt_pb2.RecognizeRequest(config=config)
        start = time.perf_counter()
        for i, chunk in enumerate(chunks):
            if realtime:
                delay = start + i * chunk_ms / 1000 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            yield stt_pb2.RecognizeRequest(audio=chunk)
            sent_ms += chunk_ms
        result.audio_done_at = time.perf_counter()
        if end_with_control:
            yield stt_pb2.RecognizeRequest(control=stt_pb2.SttControl(action=stt_pb2.SttControl.ACTION_END))

    async for response in stub.StreamingRecognize(requests()):
        item = Received(response, time.perf_counter(), sent_ms)
        result.received.append(item)
        if on_response is not None:
            on_response(item)
    return result
