"""A caller whose microphone hears the agent: speakerphone echo, for the echo guard's tests and benchmark.

`EchoCaller` plays the agent's audio the way a client does (a turn starts playing when its first chunk
arrives, chunks back to back after that, cut at an interruption; playback marks every 100 ms) and sends a
microphone signal in real time: that playback, `gain_db` quieter and `delay_ms` later, plus whatever the
caller itself says. The stack is real where it matters: STT is faster-whisper tiny.en (the transcript
check needs real words), TTS is Piper (real speech to echo); the LLM is a fake that answers typed prompts
with fixed paragraphs (what it says does not matter here, only that it speaks for a while).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
from voxgrid.orchestrator.app import AgentRuntime
from voxgrid.orchestrator.client import TE, AgentCall, session_config
from voxgrid.orchestrator.settings import Settings as OrchestratorSettings

from tests.orchestrator.fakes import FakeLlm, backend_settings, llm_runtime
from voxgrid.client import channel
from voxgrid.server.chassis import start_server
from voxgrid.v1 import agent_pb2, agent_pb2_grpc

RATE = 16000
FRAME = RATE // 50  # 20 ms microphone frames
PROMPTS = ["Tell me about the opening hours.", "How do I reset my password?", "What does the premium plan include?",
           "Where is the nearest branch?", "Can I change my delivery address?"]
ANSWERS = [
    "We open at eight in the morning on weekdays and close at six in the evening. On Saturdays the doors "
    "open at nine and we close early, at one in the afternoon.",
    "Go to the sign in page and choose forgot password. We will send a link to your email address, and the "
    "link stays valid for one hour.",
    "The premium plan includes unlimited storage, priority support on the phone, and a monthly report about "
    "your account. It also adds two extra users at no cost.",
    "The nearest branch is on Market Street, next to the railway station. It has a car park behind the "
    "building and a cash machine at the entrance.",
    "Yes, you can change the delivery address until the parcel leaves our warehouse. Open your order, choose "
    "edit address, and confirm the new one.",
]


def long_answer(messages, tools) -> str:  # type: ignore[no-untyped-def]
    """The fake LLM's reply: a fixed paragraph per prompt (about ten seconds of speech)."""
    text = messages[-1].content
    return ANSWERS[PROMPTS.index(text)] if text in PROMPTS else ANSWERS[0]


@contextlib.asynccontextmanager
async def echo_stack() -> AsyncIterator[agent_pb2_grpc.AgentStub]:
    """Real STT (tiny.en) and TTS (Piper), the fake LLM, and an orchestrator over them, on loopback."""
    from voxgrid.services.stt.app import SttRuntime, SttSettings
    from voxgrid.services.tts.app import TtsRuntime, TtsSettings

    async with contextlib.AsyncExitStack() as stack:
        stt_settings, tts_settings = SttSettings(port=0), TtsSettings(port=0)
        stt = await stack.enter_async_context(start_server(SttRuntime(stt_settings), stt_settings))
        tts = await stack.enter_async_context(start_server(TtsRuntime(tts_settings), tts_settings))
        llm = await stack.enter_async_context(start_server(llm_runtime(FakeLlm(reply=long_answer)),
                                                           backend_settings()))
        settings = OrchestratorSettings(port=0, stt_backends=stt.address, tts_backends=tts.address,
                                        llm_backends=llm.address)
        orch = await stack.enter_async_context(start_server(AgentRuntime(settings), settings))
        ch = await stack.enter_async_context(channel(orch.address))
        yield agent_pb2_grpc.AgentStub(ch)


class EchoCaller:
    """Plays what the agent sends and feeds it back into the microphone (see the module docstring)."""

    def __init__(self, call: AgentCall, delay_ms: float = 80.0, gain_db: float = -6.0) -> None:
        assert call.out_spec.sample_rate_hz == RATE
        self.call = call
        self.delay_ms = delay_ms
        self.gain = 10 ** (gain_db / 20)
        self._t0 = 0.0
        self._play = np.zeros(RATE * 60, np.float32)  # what the loudspeaker plays, on the caller's clock
        self._seen = 0
        self._end = 0  # where the loudspeaker is free again (sample)
        self._turns: dict[int, list[int]] = {}  # turn -> [start sample, end sample]
        self._cut: set[int] = set()
        self._speech = np.zeros(0, np.float32)  # the caller's own voice, still to say
        self._task: asyncio.Task[None] | None = None

    def _at(self, t: float) -> int:
        return int((t - self._t0) * RATE)

    def _write(self, start: int, x: np.ndarray) -> None:
        if start + len(x) > len(self._play):
            self._play = np.concatenate([self._play, np.zeros(start + len(x) + RATE * 30 - len(self._play),
                                                              np.float32)])
        self._play[start:start + len(x)] = x

    def _take_responses(self) -> None:
        responses = self.call.record.responses
        for arrived, r in responses[self._seen:]:
            which = r.WhichOneof("event")
            if which == "agent_audio":
                a = r.agent_audio
                if a.turn_id in self._cut:
                    continue
                x = np.frombuffer(a.data, "<i2").astype(np.float32) / 32768
                now = self._at(arrived)
                span = self._turns.get(a.turn_id)
                start = max(now, self._end) if span is None else max(now, span[1])
                self._write(start, x)
                self._turns[a.turn_id] = [start if span is None else span[0], start + len(x)]
                self._end = start + len(x)
            elif which == "turn_event" and r.turn_event.kind == TE.KIND_INTERRUPTED:
                turn = r.turn_event.turn_id
                self._cut.add(turn)
                span = self._turns.get(turn)
                cut = self._at(arrived)
                if span is not None and span[1] > cut:  # the client flushes its buffer
                    self._play[cut:span[1]] = 0.0
                    span[1] = self._end = cut
        self._seen = len(responses)

    def say(self, samples: np.ndarray) -> None:
        """The caller speaks (float32 at 16 kHz), over whatever the loudspeaker plays."""
        self._speech = np.concatenate([self._speech, samples.astype(np.float32)])

    @property
    def speaking(self) -> bool:
        return len(self._speech) > 0

    async def _run(self) -> None:
        self._t0 = time.monotonic()
        k = 0
        while True:
            await asyncio.sleep(max(0.0, self._t0 + (k + 1) * FRAME / RATE - time.monotonic()))
            self._take_responses()
            start, d = k * FRAME, int(self.delay_ms * RATE / 1000)
            mic = np.zeros(FRAME, np.float32)
            lo = start - d
            if lo + FRAME > 0 and lo < len(self._play):
                src = self._play[max(lo, 0):lo + FRAME]
                mic[FRAME - len(src):] += self.gain * src
            if len(self._speech):
                own, self._speech = self._speech[:FRAME], self._speech[FRAME:]
                mic[:len(own)] += own
            self.call.send_audio((np.clip(mic, -1, 32767 / 32768) * 32768).astype("<i2").tobytes())
            if k % 5 == 4:
                self._mark(start + FRAME)
            k += 1

    def _mark(self, now: int) -> None:
        """A playback mark for the turn playing (or last played), as a client sends them."""
        if not self._turns:
            return
        turn = max(self._turns)
        begin, end = self._turns[turn]
        played_ms = max(0, min(now, end) - begin) * 1000 // RATE
        self.call.send(agent_pb2.ConverseRequest(playback=agent_pb2.PlaybackMark(turn_id=turn, played_ms=played_ms)))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class EchoResult:
    agent_turns: int = 0
    interruptions: int = 0  # agent turns cut off (all false barge-ins unless the caller spoke)
    echo_user_turns: int = 0  # user turns started from the agent's own voice (spoken finals)
    rejected_as_echo: int = 0
    echo_cancelled_s: float = 0.0
    attenuation_db: list[float] = field(default_factory=list)
    finals: list[str] = field(default_factory=list)
    unsettled: int = 0  # prompts after which the agent never fell silent (it kept answering itself)
    delays_ms: list[float] = field(default_factory=list)  # echo delays the canceller measured (turn records)
    gated_s: float = 0.0  # caller audio its start-of-turn gate muted


def guard_config(aec: bool, check: bool, tracking: bool = True) -> agent_pb2.SessionConfig:
    config = session_config(rate=RATE)
    config.edge_audio.echo_cancellation = aec
    config.edge_audio.echo_delay_tracking = tracking
    config.turn_taking.echo_check = check
    return config


def _open_turns(call: AgentCall) -> bool:
    started = {e.turn_id for e in call.record.events(TE.KIND_AGENT_STARTED_SPEAKING)}
    over = {e.turn_id for e in call.record.events() if e.kind in (TE.KIND_AGENT_STOPPED_SPEAKING,
                                                                     TE.KIND_INTERRUPTED)}
    return bool(started - over)


async def settle(call: AgentCall, quiet_s: float = 2.5, timeout_s: float = 45.0) -> bool:
    """Until no agent turn is open and nothing has happened for `quiet_s`; False if that never happened
    within `timeout_s` (an agent answering its own echo talks on and on)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        last = call.record.responses[-1][0] if call.record.responses else 0.0
        if not _open_turns(call) and time.monotonic() - last > quiet_s:
            return True
    return False


def summarize(call: AgentCall) -> EchoResult:
    rec = call.record
    res = EchoResult(agent_turns=len(rec.events(TE.KIND_AGENT_STARTED_SPEAKING)),
                     interruptions=len(rec.events(TE.KIND_INTERRUPTED)), finals=rec.finals())
    for lat in rec.of("latency"):
        res.rejected_as_echo += lat.interruptions_rejected_as_echo
        res.echo_cancelled_s += lat.echo_cancelled_s
        if lat.HasField("echo_attenuation_db"):
            res.attenuation_db.append(lat.echo_attenuation_db)
        if lat.HasField("echo_delay_ms"):
            res.delays_ms.append(lat.echo_delay_ms)
        res.gated_s += lat.echo_gated_s
    res.echo_user_turns = sum(1 for f in res.finals if f.strip())
    return res


DELAYS_MS = (40.0, 120.0, 60.0, 100.0, 80.0)  # a different echo delay every turn (40-120 ms)


async def silent_echo_call(stub: agent_pb2_grpc.AgentStub, *, aec: bool, check: bool, turns: int,
                           delays_ms: tuple[float, ...] = DELAYS_MS, settle_s: float = 45.0,
                           tracking: bool = True) -> EchoResult:
    """`turns` typed prompts; the caller says nothing, its microphone only hears the agent."""
    async with AgentCall(stub, guard_config(aec, check, tracking)) as call:
        caller = EchoCaller(call)
        caller.start()
        unsettled = ours = 0
        try:
            for i in range(turns):
                caller.delay_ms = delays_ms[i % len(delays_ms)]
                call.send(agent_pb2.ConverseRequest(text=PROMPTS[i % len(PROMPTS)]))
                await call.wait_for(lambda rec, n=i: len(rec.events(TE.KIND_AGENT_STARTED_SPEAKING)) > n, 60)
                if not await settle(call, timeout_s=settle_s):
                    unsettled += 1
                    ours += _open_turns(call)  # this INTERRUPTED is the test's, not a barge-in
                    call.interrupt()  # stop the self-talk, so the next prompt starts clean
                    await settle(call, timeout_s=10)
            assert call.error is None, call.error
            result = summarize(call)
            result.unsettled = unsettled
            result.interruptions -= ours
            # One more turn's record carries the echo guard's figures for the last answer.
            n = len(call.record.of("latency"))
            call.send(agent_pb2.ConverseRequest(text=PROMPTS[0]))
            await call.wait_for(lambda rec: len(rec.of("latency")) > n, 60)
            last = summarize(call)
            result.rejected_as_echo, result.echo_cancelled_s = last.rejected_as_echo, last.echo_cancelled_s
            result.attenuation_db, result.delays_ms, result.gated_s = last.attenuation_db, last.delays_ms, last.gated_s
            return result
        finally:
            await caller.stop()


@dataclass
class InterruptResult:
    tries: int = 0
    detected: int = 0  # agent turns cut off within `within_s` of the second voice starting
    detect_s: list[float] = field(default_factory=list)  # second voice starts -> INTERRUPTED arrives


async def interrupting_call(stub: agent_pb2_grpc.AgentStub, voice: np.ndarray, *, aec: bool, check: bool,
                            tracking: bool = True, turns: int, at_s: tuple[float, ...] = (0.3, 3.0, 1.0),
                            delays_ms: tuple[float, ...] = DELAYS_MS, within_s: float = 8.0) -> InterruptResult:
    """`turns` prompts; `at_s` seconds after each answer starts a second voice (`voice`, 16 kHz) talks over
    the echo. The answer to the interruption is stopped by the test (its INTERRUPTED is not counted)."""
    res = InterruptResult()
    async with AgentCall(stub, guard_config(aec, check, tracking)) as call:
        caller = EchoCaller(call)
        caller.start()
        try:
            for i in range(turns):
                caller.delay_ms = delays_ms[i % len(delays_ms)]
                started = len(call.record.events(TE.KIND_AGENT_STARTED_SPEAKING))
                call.send(agent_pb2.ConverseRequest(text=PROMPTS[i % len(PROMPTS)]))
                await call.wait_for(lambda rec, n=started: len(rec.events(TE.KIND_AGENT_STARTED_SPEAKING)) > n, 60)
                turn = call.record.events(TE.KIND_AGENT_STARTED_SPEAKING)[-1].turn_id
                await asyncio.sleep(at_s[i % len(at_s)])
                caller.say(voice)
                t0 = time.monotonic()
                res.tries += 1

                def cut(rec, turn=turn) -> bool:  # type: ignore[no-untyped-def]
                    return any(e.turn_id == turn for e in rec.events(TE.KIND_INTERRUPTED))
                try:
                    await call.wait_for(cut, within_s)
                    res.detected += 1
                    res.detect_s.append(time.monotonic() - t0)
                except TimeoutError:
                    pass
                if not await settle(call, timeout_s=20):
                    call.interrupt()  # the answer to the interruption: not measured here
                    await settle(call, timeout_s=10)
            assert call.error is None, call.error
            return res
        finally:
            await caller.stop()
