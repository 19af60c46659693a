"""The gRPC edge of the duplex service: validate the config, convert audio at the edge, relay frames.

Audio arrives in any supported format and is decoded and resampled once (`AudioIn`) to the model's
24 kHz; each model frame goes back in the requested format (`AudioOut`) with its text and timing. The
servicer only submits audio to its session and awaits frames: the model runs in the slot scheduler's
thread. Whatever ends the stream (end, error, disconnect), the session's slot is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from voxgrid.services.duplex.engines.slot_sampling import SlotSampling
from voxgrid.services.duplex.slot_scheduler import DuplexFrame, SessionFailure, SlotScheduler, SlotsExhausted

from voxgrid.audio import AudioFormatError, AudioIn, AudioOut, AudioSpec
from voxgrid.errors import Reason
from voxgrid.server.streams import Outbox, StreamError, abort, bind_session, invalid, pump, read_config
from voxgrid.v1 import audio_pb2, duplex_pb2, duplex_pb2_grpc

log = logging.getLogger(__name__)

_FAILURE_CODES = {
    "stalled": grpc.StatusCode.DEADLINE_EXCEEDED,
    "ahead": grpc.StatusCode.INVALID_ARGUMENT,
    "stopping": grpc.StatusCode.UNAVAILABLE,
    "internal": grpc.StatusCode.INTERNAL,
}
RETRY_AFTER_S = 1.0  # RetryInfo, and the deprecated `retry-after-ms` trailer beside it


def session_sampling(config: duplex_pb2.DuplexConfig, defaults: SlotSampling) -> SlotSampling:
    """The session's sampling: its own temperatures and seed where set, the model's defaults elsewhere."""
    for name in ("text_temperature", "audio_temperature"):
        if config.HasField(name) and not 0.0 <= getattr(config, name) <= 2.0:
            raise invalid(f"config.{name} {getattr(config, name):g} is out of range: use 0 (greedy) to 2",
                          f"config.{name}", Reason.INVALID_CONFIG)
    return SlotSampling(
        text_temperature=config.text_temperature if config.HasField("text_temperature") else defaults.text_temperature,
        audio_temperature=(
            config.audio_temperature if config.HasField("audio_temperature") else defaults.audio_temperature
        ),
        seed=config.seed if config.HasField("seed") else defaults.seed,
    )


def audio_specs(config: duplex_pb2.DuplexConfig) -> tuple[AudioSpec, AudioSpec]:
    try:
        in_spec = AudioSpec.from_proto(
            config.input_format if config.HasField("input_format") else None, what="config.input_format"
        )
        out_spec = (
            AudioSpec.from_proto(config.output_format, what="config.output_format")
            if config.HasField("output_format") else in_spec
        )
    except AudioFormatError as exc:
        raise invalid(str(exc), "config.input_format" if "input_format" in str(exc) else "config.output_format",
                      Reason.INVALID_CONFIG) from None
    return in_spec, out_spec


class DuplexServicer(duplex_pb2_grpc.DuplexServicer):
    def __init__(self, scheduler: SlotScheduler, model_name: str) -> None:
        self.scheduler = scheduler
        self.model_name = model_name

    async def Converse(
        self, request_iterator: AsyncIterator[duplex_pb2.DuplexRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[duplex_pb2.DuplexResponse]:
        config = await read_config(request_iterator, context)
        bind_session(config.session_id)
        model = self.scheduler.model
        try:
            in_spec, out_spec = audio_specs(config)
            sampling = session_sampling(config, model.default_sampling())
        except StreamError as err:
            await err.abort(context)
        try:
            session = self.scheduler.open_session(sampling, config.session_id)
        except SlotsExhausted as exc:
            await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), reason=Reason.REPLICA_FULL,
                        retry_after_s=RETRY_AFTER_S)
        except SessionFailure as exc:
            await abort(context, _FAILURE_CODES[exc.kind], exc.message)
        log.info("session joined slot %d (%s in, %s out)", session.slot, in_spec, out_spec)

        audio_in = AudioIn(in_spec, model.sample_rate)
        audio_out = AudioOut(model.sample_rate, out_spec)
        outbox: Outbox[duplex_pb2.DuplexResponse] = Outbox()
        frame_ms = model.frame_ms

        def push(samples_bytes: bytes | None) -> None:
            try:
                samples = audio_in.flush() if samples_bytes is None else audio_in.feed(samples_bytes)
                session.push_audio(samples)
            except AudioFormatError as exc:
                raise invalid(str(exc)) from None
            except SessionFailure as exc:
                raise StreamError(_FAILURE_CODES[exc.kind], exc.message) from None

        async def on_request(request: duplex_pb2.DuplexRequest) -> None:
            which = request.WhichOneof("request")
            if session.input_ended:
                raise invalid(f"`{which}` after `end`: nothing may follow the end of a conversation")
            if which == "audio":
                push(request.audio)
            elif which == "control" and request.control.action == duplex_pb2.DuplexControl.ACTION_END:
                await on_requests_end()
            elif which == "control":
                raise invalid("unknown control action: use ACTION_END to finish the conversation")
            elif which == "config":
                raise invalid("a second `config`: send it once, first; later messages carry `audio` or `control`")
            else:
                raise invalid("empty message: send `audio` or `control`")

        async def on_requests_end() -> None:
            if not session.input_ended:  # `end` then a half-close: finish once
                push(None)
                session.end()

        def response(frame: DuplexFrame) -> duplex_pb2.DuplexResponse:
            return duplex_pb2.DuplexResponse(audio=duplex_pb2.DuplexAudio(
                data=audio_out.feed(frame.pcm),
                text=frame.text,
                frame_index=frame.frame_index,
                audio_offset_ms=round(frame.frame_index * frame_ms),
                step_ms=frame.step_ms,
                frames_late=frame.frames_late,
            ))

        async def forward() -> None:
            try:
                async for frame in session.frames():
                    outbox.put(response(frame))
                outbox.close()
            except SessionFailure as exc:
                outbox.close(StreamError(_FAILURE_CODES[exc.kind], exc.message))

        forwarder = asyncio.create_task(forward())
        try:
            async for item in pump(request_iterator, on_request, outbox, context, on_requests_end):
                yield item
        finally:
            forwarder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forwarder
            session.close()
            log.info("session left slot %d after %d frames (%d late)", session.slot, session.frames_out,
                     session.frames_late)

    async def ListModels(
        self, request: audio_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> audio_pb2.ListModelsResponse:
        model = self.scheduler.model
        info = audio_pb2.ModelInfo(
            name=self.model_name, engine=model.engine_name, languages=["en"], sample_rate_hz=model.sample_rate,
        )
        info.properties.update(model.info())
        return audio_pb2.ListModelsResponse(models=[info])
