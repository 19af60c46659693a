"""The echo guard end to end: a speakerphone caller whose microphone hears the agent at -6 dB, 40-120 ms late
(a different delay every turn: the canceller's delay tracking must follow it).

Real STT (tiny.en) and real TTS (Piper): the echo is real speech and the self-echo check reads real
transcripts. Without the guard the same caller makes the agent cut itself off (so these tests can fail);
with it the agent talks through its own echo, and a second voice saying something else still interrupts.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import pytest_asyncio
import soxr
from voxgrid.orchestrator.client import TE, AgentCall

from tests.e2e.echo_caller import DELAYS_MS, PROMPTS, RATE, EchoCaller, echo_stack, guard_config, silent_echo_call
from voxgrid.speech import FliteMissing, synthesize
from voxgrid.v1 import agent_pb2

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
log = logging.getLogger(__name__)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack():
    async with echo_stack() as stub:
        yield stub


@pytest.mark.asyncio(loop_scope="module")
async def test_a_silent_caller_hearing_the_agent_never_interrupts_it(stack) -> None:
    # The echo path changes every turn (40, 120, 60, 100 ms): each answer starts on a path the canceller has
    # not seen; delay tracking measures it and aligns the reference instead of re-learning (docs/edge-audio.md).
    result = await silent_echo_call(stack, aec=True, check=True, turns=4, delays_ms=DELAYS_MS)
    log.info("echo guard on: %s", result)
    assert result.interruptions == 0, result
    assert result.unsettled == 0, result
    assert result.echo_cancelled_s > 0  # the canceller ran while the agent spoke (turn records say so)
    assert result.delays_ms and all(-250 < d < 300 for d in result.delays_ms), result.delays_ms


@pytest.mark.asyncio(loop_scope="module")
async def test_without_the_guard_the_same_caller_interrupts_the_agent(stack) -> None:
    result = await silent_echo_call(stack, aec=False, check=False, turns=1, delays_ms=(80.0,), settle_s=15.0)
    log.info("echo guard off: %s", result)
    assert result.interruptions >= 1, result
    assert result.rejected_as_echo == 0 and result.echo_cancelled_s == 0


@pytest.mark.parametrize("after_s", [3.0, 0.3], ids=["mid-sentence", "before-the-delay-is-measured"])
@pytest.mark.asyncio(loop_scope="module")
async def test_a_second_voice_still_interrupts(stack, speech_dir, after_s: float) -> None:
    try:  # flite's "rms", a man's voice: the agent (Piper) is a woman's
        x, rate = synthesize("Stop please. What time do you open tomorrow?", speech_dir / "interrupt_rms.wav",
                             voice="rms")
    except FliteMissing:
        pytest.skip("flite is not installed (make setup installs it with apt-get)")
    voice = soxr.resample(x, rate, RATE).astype("float32")
    async with AgentCall(stack, guard_config(True, True)) as call:
        caller = EchoCaller(call, delay_ms=100.0)
        caller.start()
        try:
            call.send(agent_pb2.ConverseRequest(text=PROMPTS[2]))
            await call.wait_for(lambda rec: bool(rec.events(TE.KIND_AGENT_STARTED_SPEAKING)), 60)
            started = time.monotonic()
            # Mid-sentence, or at the start of the answer, where the start-of-turn gate holds echo-alone audio:
            # a caller talking over the agent's echo must pass it.
            await asyncio.sleep(after_s)
            caller.say(voice)
            try:
                await call.wait_for(lambda rec: bool(rec.events(TE.KIND_INTERRUPTED)), 30)
                await call.wait_for(lambda rec: any("tomorrow" in f.lower() or "open" in f.lower()
                                                    for f in rec.finals()), 30)
            except TimeoutError:  # what STT made of the caller's audio says why
                heard = [(round(at - started, 2), t.text, t.is_final) for at, r in call.record.responses
                         if r.WhichOneof("event") == "user_transcript" for t in [r.user_transcript]]
                pytest.fail(f"no interruption: STT heard {heard}; events {[e.kind for e in call.record.events()]}")
        finally:
            await caller.stop()
    interrupted = call.record.events(TE.KIND_INTERRUPTED)
    assert interrupted[0].turn_id == call.record.agent_turns()[0]
    assert call.error is None
