"""voxgrid TTS service: streaming text in, audio chunks with speech marks out (Piper on CPU, Kokoro on GPU)."""

from __future__ import annotations

import asyncio
import logging

import grpc
from voxgrid.services.tts.engines.base import TtsEngine
from voxgrid.services.tts.scheduler import SynthesisScheduler
from voxgrid.services.tts.servicer import TextToSpeechServicer
from voxgrid.services.tts.settings import TtsSettings
from voxgrid.services.tts.voices import find_voices

from voxgrid.server.chassis import ServiceRuntime
from voxgrid.v1 import tts_pb2, tts_pb2_grpc

log = logging.getLogger("voxgrid.tts")

Settings = TtsSettings


def create_engine(settings: TtsSettings) -> TtsEngine:
    custom = find_voices(settings.voices_dir)
    if settings.engine == "kokoro":
        from voxgrid.services.tts.engines.kokoro_engine import KokoroEngine

        return KokoroEngine(settings.kokoro_model_path, settings.kokoro_voices_path, settings.device,
                            settings.onnx_threads, settings.kokoro_lang, custom=custom)
    from voxgrid.services.tts.engines.piper_engine import PiperEngine

    if custom.styles or custom.blends:
        log.info("voices_dir: Kokoro voices %s ignored by the Piper engine",
                 ", ".join(sorted({*custom.styles, *custom.blends})))
    return PiperEngine([*settings.extra_voice_paths(), *custom.piper], settings.device, settings.onnx_threads)


class TtsRuntime(ServiceRuntime):
    name = "tts"

    def __init__(self, settings: TtsSettings, engine: TtsEngine | None = None) -> None:
        self.settings = settings
        self.engine = engine or create_engine(settings)
        self.scheduler = SynthesisScheduler(self.engine, settings.worker_threads)

    def service_names(self) -> list[str]:
        return [tts_pb2.DESCRIPTOR.services_by_name["TextToSpeech"].full_name]

    def register(self, server: grpc.aio.Server) -> None:
        tts_pb2_grpc.add_TextToSpeechServicer_to_server(
            TextToSpeechServicer(self.engine, self.scheduler, self.settings), server
        )

    async def start(self) -> None:
        await asyncio.to_thread(self.engine.load)
        if self.settings.default_voice:
            self.engine.voice(self.settings.default_voice)  # fail at start, not on the first call
        self.scheduler.start()
        # One throwaway synthesis so the first caller does not pay onnxruntime's lazy initialisation.
        await asyncio.to_thread(lambda: list(self.engine.synthesize("Ready.", self.engine.voices()[0].name, 1.0)))

    async def stop(self) -> None:
        await asyncio.to_thread(self.scheduler.stop)
        self.engine.close()


def create_runtime(settings: TtsSettings) -> TtsRuntime:
    return TtsRuntime(settings)
