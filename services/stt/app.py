"""voxgrid STT: streaming speech to text (faster-whisper, Silero VAD, local-agreement partials)."""

from __future__ import annotations

import asyncio
import logging

import grpc
from voxgrid.services.stt.endpointing import EndpointingOptions
from voxgrid.services.stt.engines.base import SttEngine
from voxgrid.services.stt.engines.faster_whisper import FasterWhisperEngine
from voxgrid.services.stt.scheduler import DecodeScheduler
from voxgrid.services.stt.servicer import SpeechToTextServicer, SttMetrics
from voxgrid.services.stt.settings import SttSettings
from voxgrid.services.stt.turn_model import SmartTurnModel, TurnDetector, TurnModelUnavailable, resolve_turn_model
from voxgrid.services.stt.vad import SileroVad

from voxgrid.server.chassis import ServiceRuntime
from voxgrid.v1 import stt_pb2, stt_pb2_grpc

log = logging.getLogger(__name__)

Settings = SttSettings


def build_engine(settings: SttSettings) -> SttEngine:
    engine = FasterWhisperEngine(
        settings.model, device=settings.device, compute_type=settings.compute_type,
        cpu_threads=settings.cpu_threads, beam_size=settings.beam_size,
        partial_beam_size=settings.partial_beam_size, window_quantum_s=settings.window_quantum_s,
        final_window_quantum_s=settings.final_window_quantum_s, name=settings.model_name,
        preview_window_quantum_s=settings.preview_window_quantum_s,
    )
    return engine


def endpointing_defaults(settings: SttSettings) -> EndpointingOptions:
    return EndpointingOptions(
        min_silence_ms=settings.min_silence_ms, min_speech_ms=settings.min_speech_ms,
        vad_threshold=settings.vad_threshold, max_utterance_ms=settings.max_utterance_ms,
        partial_interval_ms=settings.partial_interval_ms, speculative_final_ms=settings.speculative_final_ms,
        fast_preview=settings.fast_preview, preview_ms=settings.preview_ms,
        mode=settings.turn_mode, turn_min_wait_ms=settings.turn_min_wait_ms,
        turn_max_wait_ms=settings.turn_max_wait_ms, turn_threshold=settings.turn_threshold,
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
        await self._load_turn_model()
        self.scheduler.start()
        self.servicer.model = self.engine.info()

    async def _load_turn_model(self) -> None:
        """Load the semantic end-of-turn model; without it only semantic sessions are refused."""
        s = self.settings
        if not s.turn_model:
            if s.turn_mode == "semantic":
                raise TurnModelUnavailable("turn_mode is semantic but turn_model is empty: set VOXGRID_STT_TURN_MODEL")
            return
        try:
            path = await asyncio.to_thread(resolve_turn_model, s.turn_model)
            model = await asyncio.to_thread(SmartTurnModel, path, s.turn_threads)
        except TurnModelUnavailable as exc:
            if s.turn_mode == "semantic":
                raise
            log.warning("semantic end of turn unavailable, sessions asking for it are refused: %s", exc)
            return
        self.servicer.turn_detector = TurnDetector(model, on_inference=self.metrics.turn_inference.observe)

    async def stop(self) -> None:
        await asyncio.to_thread(self.scheduler.stop)
        self.servicer.vad_pool.shutdown(wait=False)
        if self.servicer.turn_detector is not None:
            self.servicer.turn_detector.close()


def create_runtime(settings: SttSettings) -> SttRuntime:
    return SttRuntime(settings)
