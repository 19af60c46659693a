"""The gRPC edge of STT: validate configs and audio, run one RecognitionSession per stream, map results.

Audio enters through `AudioIn` (decode + resample to 16 kHz once). VAD runs on a small thread pool,
decodes on the engine's scheduler thread: the event loop only moves bytes and messages.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
import uuid
from collections.abc import AsyncIterator

import grpc
from voxgrid.services.stt.endpointing import FIXED_SILENCE, SEMANTIC, EndpointingOptions, EndReason
from voxgrid.services.stt.engines.base import ModelInfo
from voxgrid.services.stt.scheduler import DecodeScheduler
from voxgrid.services.stt.session import (
    RecognitionOptions,
    RecognitionSession,
    SpeechEventOut,
    TranscriptOut,
    TurnDecision,
)
from voxgrid.services.stt.turn_model import TurnDetector
from voxgrid.services.stt.vad import SileroVad

from voxgrid import metrics
from voxgrid.audio import AudioFormatError, AudioIn, AudioSpec
from voxgrid.errors import Reason
from voxgrid.server.streams import Outbox, StreamError, abort, bind_session, invalid, pump, read_config
from voxgrid.v1 import audio_pb2, stt_pb2, stt_pb2_grpc

Control = stt_pb2.SttControl
_RANGES = {  # field: (low, high, inclusive-low)
    "min_silence_ms": (50, 5000), "min_speech_ms": (0, 5000), "max_utterance_ms": (1000, 30000),
    "partial_interval_ms": (100, 5000), "turn_min_wait_ms": (50, 2000), "turn_max_wait_ms": (100, 10000),
    "preview_ms": (0, 5000),
}
_PROBABILITIES = ("vad_threshold", "turn_threshold")
_MODES = {stt_pb2.ENDPOINT_MODE_FIXED_SILENCE: FIXED_SILENCE, stt_pb2.ENDPOINT_MODE_SEMANTIC: SEMANTIC}
_MODE_PROTO = {v: k for k, v in _MODES.items()}
_END_REASON_PROTO = {
    EndReason.SILENCE: stt_pb2.END_OF_TURN_REASON_SILENCE, EndReason.COMPLETE: stt_pb2.END_OF_TURN_REASON_COMPLETE,
    EndReason.MAX_WAIT: stt_pb2.END_OF_TURN_REASON_MAX_WAIT,
}


class SttMetrics:
    def __init__(self) -> None:
        self.finalization = metrics.histogram(
            "stt", "finalization_seconds", "End of speech (VAD) to the final transcript leaving the server.")
        self.partial_latency = metrics.histogram(
            "stt", "partial_latency_seconds", "Wall time of the decode behind each partial transcript.")
        self.rtf = metrics.rtf_histogram("stt")
        self.queue_depth = metrics.gauge("stt", "decode_queue_depth", "Decode jobs waiting for the model.")
        self.batch_size = metrics.histogram(
            "stt", "decode_batch_size", "Windows decoded per model call.", buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.turn_inference = metrics.histogram(
            "stt", "turn_model_inference_seconds", "Wall time of one semantic end-of-turn model inference.")


def endpointing_options(cfg: stt_pb2.EndpointingConfig, defaults: EndpointingOptions) -> EndpointingOptions:
    """Config overrides on top of the server defaults; out-of-range values are INVALID_ARGUMENT."""
    values: dict[str, object] = {}
    if cfg.HasField("mode") and cfg.mode != stt_pb2.ENDPOINT_MODE_UNSPECIFIED:
        if cfg.mode not in _MODES:
            raise invalid(f"endpointing.mode {cfg.mode} is unknown: use ENDPOINT_MODE_FIXED_SILENCE or "
                          "ENDPOINT_MODE_SEMANTIC", "config.endpointing.mode", Reason.INVALID_CONFIG)
        values["mode"] = _MODES[cfg.mode]
    for name in (*_RANGES, *_PROBABILITIES):
        if not cfg.HasField(name):
            continue
        value = getattr(cfg, name)
        if name in _PROBABILITIES:
            if not 0 < value < 1:
                raise invalid(f"endpointing.{name} {value:g} is out of range: use a value in (0, 1), e.g. 0.5",
                              f"config.endpointing.{name}", Reason.INVALID_CONFIG)
        else:
            lo, hi = _RANGES[name]
            if not lo <= value <= hi:
                raise invalid(f"endpointing.{name} {value} is out of range: use {lo}..{hi} ms",
                              f"config.endpointing.{name}", Reason.INVALID_CONFIG)
        values[name] = value
    if cfg.HasField("fast_preview"):
        values["fast_preview"] = cfg.fast_preview
    base = {f: getattr(defaults, f) for f in EndpointingOptions.__dataclass_fields__}
    options = EndpointingOptions(**(base | values))
    if options.semantic and options.turn_min_wait_ms > options.turn_max_wait_ms:
        raise invalid(f"endpointing.turn_min_wait_ms {options.turn_min_wait_ms} is above turn_max_wait_ms "
                      f"{options.turn_max_wait_ms}: the short wait cannot be longer than the cap",
                      "config.endpointing.turn_min_wait_ms", Reason.INVALID_CONFIG)
    return options


class SpeechToTextServicer(stt_pb2_grpc.SpeechToTextServicer):
    def __init__(
        self, scheduler: DecodeScheduler, defaults: EndpointingOptions, stt_metrics: SttMetrics, *,
        final_keeps_commit: bool = False,
    ) -> None:
        self.scheduler = scheduler
        self.final_keeps_commit = final_keeps_commit
        self.model: ModelInfo | None = None  # set once the engine has loaded
        self.defaults = defaults
        self.metrics = stt_metrics
        self.vad_pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="stt-vad")
        self.sessions: dict[str, RecognitionSession] = {}
        self.turn_detector: TurnDetector | None = None  # set at start when the turn model loads

    async def ListModels(
        self, request: audio_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> audio_pb2.ListModelsResponse:
        if self.model is None:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "the model is still loading: retry in a few seconds",
                        reason=Reason.MODEL_LOADING)
        info = audio_pb2.ModelInfo(
            name=self.model.name, engine=self.model.engine, languages=list(self.model.languages),
            sample_rate_hz=16000, properties=self.model.properties,
        )
        return audio_pb2.ListModelsResponse(models=[info])

    def _options(self, config: stt_pb2.RecognitionConfig) -> RecognitionOptions:
        if self.model is None:
            raise StreamError(grpc.StatusCode.UNAVAILABLE, "the model is still loading: retry in a few seconds",
                              reason=Reason.MODEL_LOADING)
        if config.model and config.model != self.model.name:
            raise invalid(f"model {config.model!r} is not served here: use {self.model.name!r} or leave it empty",
                          "config.model", Reason.INVALID_CONFIG)
        language = config.language.strip().lower()
        if language and language not in self.model.languages:
            raise invalid(f"language {config.language!r} is not known to model {self.model.name}: use one of "
                          f"{', '.join(self.model.languages[:20])}{'…' if len(self.model.languages) > 20 else ''}",
                          "config.language", Reason.INVALID_CONFIG)
        endpointing = endpointing_options(config.endpointing, self.defaults)
        if endpointing.semantic and self.turn_detector is None:
            raise StreamError(grpc.StatusCode.FAILED_PRECONDITION,
                              "semantic end of turn is not available on this replica (no turn model loaded: see "
                              "VOXGRID_STT_TURN_MODEL): use ENDPOINT_MODE_FIXED_SILENCE",
                              reason=Reason.NOT_CONFIGURED, field="config.endpointing.mode")
        return RecognitionOptions(
            endpointing=endpointing,
            interim_results=config.interim_results, language=language,
            initial_prompt=config.initial_prompt.strip(),
            hotwords=tuple(h.strip() for h in config.hotwords if h.strip()),
            final_keeps_commit=self.final_keeps_commit,
        )

    async def StreamingRecognize(
        self, request_iterator: AsyncIterator[stt_pb2.RecognizeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[stt_pb2.RecognizeResponse]:
        config = await read_config(request_iterator, context)
        session_id = config.session_id or uuid.uuid4().hex[:12]
        bind_session(session_id)
        try:
            spec = AudioSpec.from_proto(config.format if config.HasField("format") else None, what="config.format")
            options = self._options(config)
        except AudioFormatError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), field="config.format",
                        reason=Reason.INVALID_CONFIG)
        except StreamError as exc:
            await exc.abort(context)
        key = f"{session_id}/{uuid.uuid4().hex[:8]}"  # unique even if a client reuses its session id
        outbox: Outbox[stt_pb2.RecognizeResponse] = Outbox()
        audio_in = AudioIn(spec, 16000)
        loop = asyncio.get_running_loop()
        session = RecognitionSession(
            key, options, SileroVad.shared().stream(), self.scheduler,
            lambda ev: outbox.put(self._to_proto(ev)),
            on_partial_latency=self.metrics.partial_latency.observe, turn_detector=self.turn_detector,
        )
        self.sessions[key] = session
        ended = False

        async def on_request(request: stt_pb2.RecognizeRequest) -> None:
            nonlocal ended
            kind = request.WhichOneof("request")
            if ended:
                raise invalid("the stream was ended with control.end: send nothing after it, or half-close")
            if kind == "audio":
                try:
                    samples = audio_in.feed(request.audio)
                except AudioFormatError as exc:
                    raise invalid(str(exc)) from exc
                if len(samples):
                    probs = await loop.run_in_executor(self.vad_pool, session.vad, samples)
                    session.feed(samples, probs)
                    await session.settle()  # a turn verdict in flight is applied before the next audio
            elif kind == "control":
                action = request.control.action
                if action == Control.ACTION_FLUSH:
                    session.flush()
                elif action == Control.ACTION_CANCEL:
                    session.cancel_utterance()
                elif action == Control.ACTION_END:
                    ended = True
                    await on_end()
                else:
                    raise invalid("control.action is not set: use ACTION_FLUSH, ACTION_END or ACTION_CANCEL")
            elif kind == "config":
                raise invalid("config was already sent: send it once, as the first message")
            else:
                raise invalid("empty message: each message after the config carries `audio` or `control`")

        async def on_end() -> None:
            await session.finish()
            outbox.close()

        try:
            async for response in pump(request_iterator, on_request, outbox, context, on_requests_end=on_end):
                if response.WhichOneof("result") == "transcript" and response.transcript.is_final:
                    anchor = response.transcript.latency_ms  # carried the anchor: see _to_proto
                    latency = max(time.perf_counter() - anchor, 0.0)
                    response.transcript.latency_ms = latency * 1000
                    self.metrics.finalization.observe(latency)
                yield response
        finally:
            session.close()
            self.sessions.pop(key, None)

    @staticmethod
    def _to_proto(ev: SpeechEventOut | TranscriptOut) -> stt_pb2.RecognizeResponse:
        if isinstance(ev, SpeechEventOut):
            kind = (stt_pb2.SpeechEvent.KIND_SPEECH_RESUMED if ev.resumed else
                    stt_pb2.SpeechEvent.KIND_SPEECH_STARTED if ev.started else stt_pb2.SpeechEvent.KIND_SPEECH_ENDED)
            event = stt_pb2.SpeechEvent(kind=kind, audio_offset_ms=ev.offset_ms, utterance_id=ev.utterance_id)
            _set_turn(event, ev.turn)
            return stt_pb2.RecognizeResponse(speech_event=event)
        t = stt_pb2.Transcript(
            utterance_id=ev.utterance_id, text=ev.text, is_final=ev.is_final, committed_text=ev.committed_text,
            stability=ev.stability, start_ms=ev.start_ms, end_ms=ev.end_ms, confidence=ev.confidence,
            language=ev.language, speculative=ev.speculative,
            # Finals carry their anchor (perf_counter of the end of speech) until they are yielded.
            latency_ms=ev.final_anchor if ev.is_final and ev.final_anchor is not None else ev.decode_ms,
        )
        _set_turn(t, ev.turn)
        if ev.language_probability is not None:
            t.language_probability = ev.language_probability
        for w in ev.words:
            t.words.add(word=w.word, start_ms=round(w.start_s * 1000), end_ms=round(w.end_s * 1000),
                        confidence=w.probability)
        return stt_pb2.RecognizeResponse(transcript=t)


def _set_turn(msg: stt_pb2.SpeechEvent | stt_pb2.Transcript, turn: TurnDecision | None) -> None:
    if turn is None:
        return
    msg.endpoint_mode = _MODE_PROTO[turn.mode]
    if turn.reason is not None:
        msg.end_of_turn_reason = _END_REASON_PROTO[turn.reason]
    if turn.probability is not None:
        msg.end_of_turn_probability = turn.probability
