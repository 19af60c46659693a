"""The gRPC edge of the TTS service: validate configs, map requests to a SpeechStream, events to protos."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from voxgrid.services.tts.engines.base import TtsEngine, UnknownVoiceError
from voxgrid.services.tts.scheduler import SynthesisScheduler
from voxgrid.services.tts.settings import TtsSettings
from voxgrid.services.tts.stream import AudioEvent, SpeechStream, StreamOptions, TextLimitError

from voxgrid.audio import AudioFormatError, AudioSpec, pcm16_spec
from voxgrid.errors import Reason
from voxgrid.server.streams import StreamError, bind_session, invalid, read_config
from voxgrid.v1 import audio_pb2, tts_pb2, tts_pb2_grpc

log = logging.getLogger("voxgrid.tts")
_Action = tts_pb2.TtsControl.Action


def stream_options(config: tts_pb2.SynthesisConfig, settings: TtsSettings, voice_languages: tuple[str, ...] = ()
                   ) -> StreamOptions:
    first = config.first_chunk_max_chars or settings.first_chunk_max_chars
    if first > settings.max_chunk_chars:
        raise invalid(
            f"first_chunk_max_chars {first} is larger than this server's longest chunk "
            f"({settings.max_chunk_chars}): send 0 for the default ({settings.first_chunk_max_chars}) "
            "or a smaller value", "config.first_chunk_max_chars", Reason.INVALID_CONFIG,
        )
    # Empty = the voice's own language: text arriving a few words at a time is too short to detect reliably.
    language = config.language or (voice_languages[0].split("-")[0] if voice_languages else "en")
    return StreamOptions(
        first_chunk_max_chars=first, clause_min_chars=settings.clause_min_chars,
        max_chunk_chars=settings.max_chunk_chars, chunk_ms=settings.chunk_ms,
        lookahead_spans=settings.lookahead_spans, max_pending_chars=settings.max_pending_chars, language=language,
    )


class TextToSpeechServicer(tts_pb2_grpc.TextToSpeechServicer):
    def __init__(self, engine: TtsEngine, scheduler: SynthesisScheduler, settings: TtsSettings) -> None:
        self._engine = engine
        self._scheduler = scheduler
        self._settings = settings

    async def ListVoices(
        self, request: audio_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> audio_pb2.ListModelsResponse:
        return audio_pb2.ListModelsResponse(models=[
            audio_pb2.ModelInfo(name=v.name, engine=v.engine, languages=list(v.languages),
                                sample_rate_hz=v.sample_rate_hz, properties=v.properties)
            for v in self._engine.voices()
        ])

    async def StreamingSynthesize(
        self, request_iterator: AsyncIterator[tts_pb2.SynthesizeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        config = await read_config(request_iterator, context)
        bind_session(config.session_id)
        try:
            stream = self._open(config)
        except StreamError as err:
            await err.abort(context)
        errors: list[StreamError] = []

        async def reader() -> None:
            try:
                async for request in request_iterator:
                    self._apply(stream, request)
                stream.end()  # half-close is the same as `end`
            except StreamError as err:
                errors.append(err)
                stream.stop()
            except TextLimitError as err:
                errors.append(StreamError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err)))
                stream.stop()

        task = asyncio.create_task(reader())
        try:
            async for event in stream.events():
                if errors:
                    break
                yield _to_proto(event)
            if errors:
                await errors[0].abort(context)
        finally:
            stream.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _open(self, config: tts_pb2.SynthesisConfig) -> SpeechStream:
        try:
            voice = self._engine.voice(config.voice or self._settings.default_voice)
        except UnknownVoiceError as exc:
            raise invalid(str(exc), "config.voice", Reason.INVALID_CONFIG) from None
        speed = config.speed or 1.0
        if not 0.5 <= speed <= 2.0:
            raise invalid(f"speed {config.speed:g} is out of range: send a value in [0.5, 2.0], or 0 for 1.0",
                          "config.speed", Reason.INVALID_CONFIG)
        try:
            spec = (AudioSpec.from_proto(config.output_format, what="output_format")
                    if config.HasField("output_format") else pcm16_spec(voice.sample_rate_hz))
        except AudioFormatError as exc:
            raise invalid(str(exc), "config.output_format", Reason.INVALID_CONFIG) from None
        options = stream_options(config, self._settings, voice.languages)
        return SpeechStream(self._scheduler, voice, speed, spec, options)

    @staticmethod
    def _apply(stream: SpeechStream, request: tts_pb2.SynthesizeRequest) -> None:
        which = request.WhichOneof("request")
        if which == "text":
            stream.add_text(request.text)
        elif which == "control":
            action = request.control.action
            if action == _Action.ACTION_FLUSH:
                stream.flush()
            elif action == _Action.ACTION_CANCEL:
                stream.cancel()
            elif action == _Action.ACTION_END:
                stream.end()
            else:
                raise invalid("control.action is unset: send ACTION_FLUSH, ACTION_CANCEL or ACTION_END")
        elif which == "config":
            raise invalid("a second config was sent: the config goes once, first; open a new stream to change it")
        else:
            raise invalid("empty message: send `text` or `control`")


def _to_proto(event: object) -> tts_pb2.SynthesizeResponse:
    if isinstance(event, AudioEvent):
        m = event.mark
        return tts_pb2.SynthesizeResponse(audio=tts_pb2.SynthesizedAudio(
            data=event.data, utterance_id=event.utterance_id, audio_offset_ms=event.audio_offset_ms,
            mark=audio_pb2.SpeechMark(text_start=m.text_start, text_end=m.text_end, text=m.text,
                                      audio_offset_ms=m.audio_offset_ms, audio_duration_ms=m.audio_duration_ms),
        ))
    d = event
    return tts_pb2.SynthesizeResponse(done=tts_pb2.SynthesisDone(
        utterance_id=d.utterance_id, cancelled=d.cancelled, audio_ms=d.audio_ms, spoken_chars=d.spoken_chars,
        time_to_first_audio_ms=d.time_to_first_audio_ms, real_time_factor=d.real_time_factor,
    ))
