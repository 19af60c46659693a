"""Simulated sessions against one backend directly, for per-service capacity.

stt: speech at real-time pace, time from the last speech frame to the final transcript.
llm: the corpus' questions as chat turns, time to first token and decode speed.
tts: the corpus' questions as text, time to first audio and real-time factor.
duplex: speech at real-time pace, how far the returned audio lags the audio sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import grpc
from voxgrid.loadtest.corpus import INPUT_SPEC
from voxgrid.loadtest.mic import PacedMic
from voxgrid.loadtest.results import SessionOutcome
from voxgrid.loadtest.session import SessionContext

from voxgrid.v1 import duplex_pb2, duplex_pb2_grpc, llm_pb2, llm_pb2_grpc, stt_pb2, stt_pb2_grpc, tts_pb2, tts_pb2_grpc


async def _guarded(ctx: SessionContext, call: grpc.aio.StreamStreamCall,
                   body: Callable[[], Awaitable[None]]) -> SessionOutcome:
    """Run a session body; map how it ended to a gRPC code name."""
    started = time.monotonic()
    try:
        await body()
        await call.done_writing()
        while await asyncio.wait_for(call.read(), ctx.reply_timeout_s) is not grpc.aio.EOF:
            pass
        return ctx.outcome(await call.code(), started)
    except grpc.aio.AioRpcError as err:
        return ctx.outcome(err.code(), started, err.details() or "")
    except TimeoutError:
        call.cancel()
        return ctx.outcome("DEADLINE_EXCEEDED", started, f"no answer within {ctx.reply_timeout_s:.0f} s")
    except asyncio.CancelledError:
        call.cancel()
        raise


async def _read_until(call: grpc.aio.StreamStreamCall, done: Callable[[object], bool], timeout_s: float) -> object:
    async def loop() -> object:
        while (resp := await call.read()) is not grpc.aio.EOF:
            if done(resp):
                return resp
        raise grpc.aio.AioRpcError(await call.code(), grpc.aio.Metadata(), grpc.aio.Metadata(),
                                   "stream ended before the answer")
    return await asyncio.wait_for(loop(), timeout_s)


async def run_stt_session(ctx: SessionContext) -> SessionOutcome:
    call = stt_pb2_grpc.SpeechToTextStub(ctx.channel).StreamingRecognize()
    mic = PacedMic(lambda frame: call.write(stt_pb2.RecognizeRequest(audio=frame)))

    async def body() -> None:
        await call.write(stt_pb2.RecognizeRequest(config=stt_pb2.RecognitionConfig(
            format=INPUT_SPEC.to_proto(), language="en", session_id=ctx.session_id, interim_results=True)))
        sender = asyncio.create_task(mic.run())
        try:
            while ctx.more_turns():
                rec = ctx.new_turn()
                last_speech_at = await mic.say(ctx.rng.choice(ctx.corpus))
                final = await _read_until(call, lambda r: r.WhichOneof("result") == "transcript"
                                          and r.transcript.is_final, ctx.reply_timeout_s)
                rec.metrics["stt_finalization_ms"] = (time.monotonic() - last_speech_at) * 1000.0
                rec.metrics["stt_server_latency_ms"] = final.transcript.latency_ms  # type: ignore[attr-defined]
                rec.metrics["mic_lag_ms"] = mic.max_lag_ms
                ctx.record(rec)
                await ctx.think()
        finally:
            mic.stop()
            with contextlib.suppress(BaseException):
                await sender
        await call.write(stt_pb2.RecognizeRequest(control=stt_pb2.SttControl(action=stt_pb2.SttControl.ACTION_END)))

    return await _guarded(ctx, call, body)


async def run_llm_session(ctx: SessionContext) -> SessionOutcome:
    call = llm_pb2_grpc.LanguageModelStub(ctx.channel).Chat()

    async def body() -> None:
        await call.write(llm_pb2.ChatRequest(config=llm_pb2.ChatConfig(session_id=ctx.session_id)))
        while ctx.more_turns():
            rec = ctx.new_turn()
            question = ctx.rng.choice(ctx.corpus).text
            request_id = f"{ctx.session_id}-{rec.turn}"
            sent = time.monotonic()
            gen = llm_pb2.GenerateRequest(request_id=request_id, messages=[
                llm_pb2.ChatMessage(role=llm_pb2.ROLE_SYSTEM, content="Answer in one short spoken sentence."),
                llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=question)])
            gen.sampling.max_tokens = ctx.max_tokens
            await call.write(llm_pb2.ChatRequest(generate=gen))
            first: float | None = None
            while True:
                resp = await asyncio.wait_for(call.read(), ctx.reply_timeout_s)
                if resp is grpc.aio.EOF:
                    raise grpc.aio.AioRpcError(await call.code(), grpc.aio.Metadata(), grpc.aio.Metadata(),
                                               "stream ended mid-generation")
                kind = resp.WhichOneof("event")
                if kind == "delta" and first is None:
                    first = time.monotonic()
                elif kind == "error":
                    raise grpc.aio.AioRpcError(_status(resp.error.code), grpc.aio.Metadata(),
                                               grpc.aio.Metadata(), resp.error.message)
                elif kind == "done":
                    end = time.monotonic()
                    done = resp.done
                    break
            rec.metrics["llm_time_to_first_token_ms"] = ((first or end) - sent) * 1000.0
            rec.metrics["llm_total_ms"] = (end - sent) * 1000.0
            rec.metrics["llm_server_ttft_ms"] = done.time_to_first_token_ms
            if done.completion_tokens > 1 and first is not None and end > first:
                rec.metrics["llm_tokens_per_s"] = (done.completion_tokens - 1) / (end - first)
            ctx.record(rec)
            await ctx.think()

    return await _guarded(ctx, call, body)


def _status(code: int) -> grpc.StatusCode:
    return next((s for s in grpc.StatusCode if s.value[0] == code), grpc.StatusCode.UNKNOWN)


async def run_tts_session(ctx: SessionContext) -> SessionOutcome:
    call = tts_pb2_grpc.TextToSpeechStub(ctx.channel).StreamingSynthesize()

    async def body() -> None:
        await call.write(tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesisConfig(
            output_format=INPUT_SPEC.to_proto(), session_id=ctx.session_id)))
        while ctx.more_turns():
            rec = ctx.new_turn()
            sent = time.monotonic()
            await call.write(tts_pb2.SynthesizeRequest(text=ctx.rng.choice(ctx.corpus).text))
            await call.write(tts_pb2.SynthesizeRequest(control=tts_pb2.TtsControl(
                action=tts_pb2.TtsControl.ACTION_FLUSH)))
            first: float | None = None
            while True:
                resp = await asyncio.wait_for(call.read(), ctx.reply_timeout_s)
                if resp is grpc.aio.EOF:
                    raise grpc.aio.AioRpcError(await call.code(), grpc.aio.Metadata(), grpc.aio.Metadata(),
                                               "stream ended mid-utterance")
                if resp.WhichOneof("result") == "audio" and first is None:
                    first = time.monotonic()
                elif resp.WhichOneof("result") == "done":
                    done = resp.done
                    break
            rec.metrics["tts_time_to_first_audio_ms"] = ((first or time.monotonic()) - sent) * 1000.0
            rec.metrics["tts_total_ms"] = (time.monotonic() - sent) * 1000.0
            rec.metrics["tts_audio_ms"] = float(done.audio_ms)
            rec.metrics["tts_rtf"] = done.real_time_factor
            ctx.record(rec)
            await ctx.think()
        await call.write(tts_pb2.SynthesizeRequest(control=tts_pb2.TtsControl(action=tts_pb2.TtsControl.ACTION_END)))

    return await _guarded(ctx, call, body)


async def run_duplex_session(ctx: SessionContext) -> SessionOutcome:
    call = duplex_pb2_grpc.DuplexStub(ctx.channel).Converse()
    mic = PacedMic(lambda frame: call.write(duplex_pb2.DuplexRequest(audio=frame)))
    received = {"ms": 0.0, "first": 0.0, "step_sum": 0.0, "steps": 0, "late": 0}

    async def receive() -> None:
        while (resp := await call.read()) is not grpc.aio.EOF:
            audio = resp.audio
            received["ms"] += len(audio.data) / 2 / INPUT_SPEC.sample_rate_hz * 1000.0
            received["first"] = received["first"] or time.monotonic()
            received["step_sum"] += audio.step_ms
            received["steps"] += 1
            received["late"] = audio.frames_late

    async def body() -> None:
        await call.write(duplex_pb2.DuplexRequest(config=duplex_pb2.DuplexConfig(
            input_format=INPUT_SPEC.to_proto(), output_format=INPUT_SPEC.to_proto(), session_id=ctx.session_id)))
        opened = time.monotonic()
        reader = asyncio.create_task(receive())
        sender = asyncio.create_task(mic.run())
        try:
            while ctx.more_turns():
                rec = ctx.new_turn()
                await mic.say(ctx.rng.choice(ctx.corpus))
                if reader.done():
                    reader.result()
                sent_ms = mic.frames_sent * 20.0
                rec.metrics["duplex_output_lag_ms"] = max(0.0, sent_ms - received["ms"])
                if received["first"] and rec.turn == 1:
                    rec.metrics["duplex_first_audio_ms"] = (received["first"] - opened) * 1000.0
                if received["steps"]:
                    rec.metrics["duplex_step_ms"] = received["step_sum"] / received["steps"]
                rec.metrics["duplex_frames_late"] = float(received["late"])
                ctx.record(rec)
                await ctx.think()
        finally:
            mic.stop()
            with contextlib.suppress(BaseException):
                await sender
        await call.write(duplex_pb2.DuplexRequest(control=duplex_pb2.DuplexControl(
            action=duplex_pb2.DuplexControl.ACTION_END)))
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(reader, ctx.reply_timeout_s)

    return await _guarded(ctx, call, body)
