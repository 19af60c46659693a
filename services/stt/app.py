"""voxgrid STT: streaming speech to text (faster-whisper, Silero VAD, local-agreement partials)."""

from __future__ import annotations

import asyncio

import grpc
from voxgrid.services.stt.endpointing import EndpointingOptions
from voxgrid.services.stt.engines.base import SttEngine
from voxgrid.services.stt.engines.faster_whisper import FasterWhisperEngine
from voxgrid.services.stt.scheduler import DecodeScheduler
from voxgrid.services.stt.servicer import SpeechToTextServicer, SttMetrics
from voxgrid.services.stt.settings import SttSettings
from voxgrid.services.stt.vad import SileroVad

from voxgrid.server.chassis import ServiceRuntime
from voxgrid.v1 import stt_pb2, stt_pb2_grpc

Settings = SttSettings


def build_engine(settings: SttSettings) -> SttEngine:
    engine = FasterWhisperEngine(
        settings.model, device=settings.device, compute_type=settings.compute_type,
        cpu_threads=settings.cpu_threads, beam_size=settings.beam_size,
        partial_beam_size=settings.partial_beam_size, window_quantum_s=settings.window_quantum_s,
        final_window_quantum_s=settings.final_window_quantum_s, name=settings.model_name,
    )
    return engine


def endpointing_defaults(settings: SttSettings) -> EndpointingOptions:
    return EndpointingOptions(
        min_silence_ms=settings.min_silence_ms, min_speech_ms=settings.min_speech_ms,
        vad_threshold=settings.vad_threshold, max_utterance_ms=settings.max_utterance_ms,
        partial_interval_ms=settings.partial_interval_ms, speculative_final_ms=settings.speculative_final_ms,
    )


class SttRuntime(ServiceRuntime):
    name = "stt"

    def __init__(self, settings: SttSettings, engine: SttEngine | None = None) -> None:
        self.settings = settings
        self.engine = engine or build_engine(settings)
        self.metrics = SttMetrics()
        self.scheduler = DecodeScheduler(
            self.engine, max_batch_size=settings.max_batch_size, on_queue_depth=self.metrics.queue_depth.set,
            on_batch=self._on_batch,
        )
        self.servicer = SpeechToTextServicer(
            self.scheduler, endpointing_defaults(settings), self.metrics, final_keeps_commit=settings.final_keeps_commit
        )

    def _on_batch(self, stats) -> None:
        self.metrics.batch_size.observe(stats.size)
        if stats.audio_s > 0:
            self.metrics.rtf.observe(stats.decode_s / stats.audio_s)

    def service_names(self) -> list[str]:
        return [stt_pb2.DESCRIPTOR.services_by_name["SpeechToText"].full_name]

    def register(self, server: grpc.aio.Server) -> None:
        stt_pb2_grpc.add_SpeechToTextServicer_to_server(self.servicer, server)

    async def start(self) -> None:
        await asyncio.to_thread(self.engine.load)
        await asyncio.to_thread(SileroVad.shared)
        self.scheduler.start()
        self.servicer.model = self.engine.info()

    async def stop(self) -> None:
        await asyncio.to_thread(self.scheduler.stop)
        self.servicer.vad_pool.shutdown(wait=False)


def create_runtime(settings: SttSettings) -> SttRuntime:
    return SttRuntime(settings)
