"""One simulated caller on Agent.Converse: speaks at real-time pace, waits for the spoken answer, thinks.

The caller streams audio continuously (speech, then silence, as a phone line does), identifies the
agent turn answering it by the first AGENT_STARTED_SPEAKING after it spoke, keeps the orchestrator's
TurnLatency record of that turn, and measures its own voice-to-voice on the client side too (last
speech frame written to first agent audio read). With a barge-in rate it sometimes starts its next
utterance while the agent is still talking and times how quickly the agent stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import grpc
from google.protobuf.json_format import MessageToDict
from voxgrid.loadtest.corpus import INPUT_SPEC
from voxgrid.loadtest.mic import PacedMic
from voxgrid.loadtest.results import SessionOutcome, TurnRecord
from voxgrid.loadtest.session import SessionContext

from voxgrid.v1 import agent_pb2, agent_pb2_grpc

TE = agent_pb2.TurnEvent
LATENCY_FIELDS = ("voice_to_voice_ms", "endpoint_wait_ms", "stt_finalization_ms", "llm_time_to_first_token_ms",
                  "tts_time_to_first_audio_ms", "orchestration_overhead_ms", "tool_ms")


@dataclass
class _Listener:
    """Everything the receive loop learned, for the turn logic to wait on."""

    started: dict[int, float] = field(default_factory=dict)  # turn_id -> first AGENT_STARTED_SPEAKING
    first_audio: dict[int, float] = field(default_factory=dict)
    ended: dict[int, tuple[int, float]] = field(default_factory=dict)  # turn_id -> (kind, at)
    latency: dict[int, agent_pb2.TurnLatency] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on(self, resp: agent_pb2.ConverseResponse) -> None:
        now = time.monotonic()
        which = resp.WhichOneof("event")
        if which == "agent_audio":
            self.first_audio.setdefault(resp.agent_audio.turn_id, now)
        elif which == "latency":
            self.latency[resp.latency.turn_id] = resp.latency
        elif which == "turn_event":
            ev = resp.turn_event
            if ev.kind == TE.KIND_AGENT_STARTED_SPEAKING:
                self.started.setdefault(ev.turn_id, now)
            elif ev.kind in (TE.KIND_AGENT_STOPPED_SPEAKING, TE.KIND_INTERRUPTED):
                self.ended.setdefault(ev.turn_id, (ev.kind, now))
        else:
            return
        self.changed.set()

    async def until(self, predicate, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while not predicate():
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return True


def session_config(ctx: SessionContext) -> agent_pb2.SessionConfig:
    cfg = agent_pb2.SessionConfig(session_id=ctx.session_id, input_format=INPUT_SPEC.to_proto())
    cfg.sampling.max_tokens = ctx.max_tokens
    return cfg


async def run_agent_session(ctx: SessionContext) -> SessionOutcome:
    started = time.monotonic()
    call = agent_pb2_grpc.AgentStub(ctx.channel).Converse()
    listener = _Listener()
    mic = PacedMic(lambda frame: call.write(agent_pb2.ConverseRequest(audio=frame)))

    async def receive() -> None:
        while (resp := await call.read()) is not grpc.aio.EOF:
            listener.on(resp)

    receiver: asyncio.Task[None] | None = None
    sender: asyncio.Task[None] | None = None
    try:
        await call.write(agent_pb2.ConverseRequest(config=session_config(ctx)))
        receiver = asyncio.create_task(receive())
        sender = asyncio.create_task(mic.run())
        await _converse(ctx, mic, listener, receiver)
        mic.stop()
        await sender
        await call.write(agent_pb2.ConverseRequest(control=agent_pb2.AgentControl(
            action=agent_pb2.AgentControl.ACTION_END)))
        await call.done_writing()
        await asyncio.wait_for(asyncio.shield(receiver), ctx.reply_timeout_s)
        return ctx.outcome(await call.code(), started, await call.details() or "")
    except grpc.aio.AioRpcError as err:
        return ctx.outcome(err.code(), started, err.details() or "")
    except TimeoutError:
        call.cancel()
        return ctx.outcome("DEADLINE_EXCEEDED", started, "the server did not end the stream after ACTION_END")
    except asyncio.CancelledError:
        call.cancel()
        raise
    finally:
        mic.stop()
        for task in (sender, receiver):
            if task and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


async def _converse(ctx: SessionContext, mic: PacedMic, listener: _Listener, receiver: asyncio.Task[None]) -> None:
    last_turn_id = 0
    barging: tuple[asyncio.Future[float], float] | None = None  # an utterance already started over the agent
    while ctx.more_turns():
        if receiver.done():
            receiver.result()  # raises the stream's error
            return
        rec = ctx.new_turn()
        if barging:
            said, speech_started = barging
            rec.barged_in, barging = True, None
        else:
            speech_started = time.monotonic()
            said = mic.say(ctx.rng.choice(ctx.corpus))
        # The stream can end while the caller is still talking (server drained, replica gone): stop then,
        # rather than wait for a microphone that can no longer write.
        await asyncio.wait({said, receiver}, return_when=asyncio.FIRST_COMPLETED)
        if not said.done():
            receiver.result()  # raises the stream's error
            return
        last_speech_at = said.result()
        rec.metrics["mic_lag_ms"] = mic.max_lag_ms
        known = last_turn_id

        def answered(known: int = known) -> bool:
            return any(t > known for t in listener.started) or receiver.done()

        if not await listener.until(answered, ctx.reply_timeout_s) or receiver.done():
            rec.metrics["no_reply"] = 1.0
            ctx.record(rec)
            continue
        turn_id = min(t for t in listener.started if t > known)
        last_turn_id = max(listener.started)
        first_audio = listener.first_audio.get(turn_id, listener.started[turn_id])
        rec.metrics["client_voice_to_voice_ms"] = (first_audio - last_speech_at) * 1000.0
        ctx.record(rec)
        if ctx.rng.random() < ctx.barge_in_rate and ctx.more_turns():
            # Talk over the agent once it has said a little; time how fast it stops.
            await asyncio.sleep(ctx.rng.uniform(0.3, 1.0))
            if turn_id not in listener.ended:
                barge_at = time.monotonic()
                barging = (mic.say(ctx.rng.choice(ctx.corpus)), barge_at)
                if await listener.until(lambda t=turn_id: t in listener.ended, ctx.reply_timeout_s):
                    kind, at = listener.ended[turn_id]
                    rec.interrupted = kind == TE.KIND_INTERRUPTED
                    if rec.interrupted:
                        rec.metrics["barge_in_reaction_ms"] = (at - barge_at) * 1000.0
                _attach_latency(rec, listener, turn_id)
                continue
        await listener.until(lambda t=turn_id: t in listener.ended, ctx.reply_timeout_s)
        if turn_id in listener.ended:
            rec.interrupted = listener.ended[turn_id][0] == TE.KIND_INTERRUPTED
            rec.metrics["turn_total_ms"] = (listener.ended[turn_id][1] - speech_started) * 1000.0
        else:
            rec.metrics["no_end"] = 1.0
        _attach_latency(rec, listener, turn_id)
        await ctx.think()


def _attach_latency(rec: TurnRecord, listener: _Listener, turn_id: int) -> None:
    """The orchestrator's TurnLatency follows AGENT_STARTED_SPEAKING: read it once the turn is over."""
    lat = listener.latency.get(turn_id)
    if lat is None:
        rec.metrics["no_latency_record"] = 1.0
        return
    values = MessageToDict(lat, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    rec.metrics.update({k: float(values[k]) for k in LATENCY_FIELDS if k in values})
    # 1: the answer was prepared on STT's preview, so its stages overlapped the endpoint wait and the final.
    rec.metrics["speculative"] = 1.0 if lat.speculative else 0.0
