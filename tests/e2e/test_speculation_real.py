"""Speculative answers on STT's fast preview, end to end with the real services over loopback gRPC.

STT is tiny.en with `fast_preview` (a greedy short-window decode early in each pause), the LLM the packaged
Qwen2.5 0.5B, TTS Piper; the caller's speech is flite, streamed in real time. A preview with the final's
words is released at the final; one with other words (the caller said a sentence twice: the preview's
loop trimming keeps it once) is dropped without a trace; a caller who resumes after a previewed pause
leaves no trace either.
"""

from __future__ import annotations

import pytest
import pytest_asyncio
from voxgrid.orchestrator.client import AgentCall, session_config

from tests.e2e.test_agent_real import RATE, ask, speech
from tests.real_stack import real_agent_stack
from voxgrid.client import channel
from voxgrid.v1 import agent_pb2, agent_pb2_grpc, audio_pb2, stt_pb2

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
HIT, MISS = agent_pb2.SPECULATION_OUTCOME_HIT, agent_pb2.SPECULATION_OUTCOME_MISS


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub():
    async with real_agent_stack(max_tokens=24) as (orch, _), channel(orch.address) as ch:
        yield agent_pb2_grpc.AgentStub(ch)


def words(text: str) -> list[str]:
    return "".join(c if c.isalnum() else " " for c in text.lower()).split()


def config(min_silence_ms: int = 300) -> agent_pb2.SessionConfig:
    return session_config(sampling=audio_pb2.SamplingParams(max_tokens=24, temperature=0.0),
                          endpointing=stt_pb2.EndpointingConfig(fast_preview=True, preview_ms=32,
                                                                min_silence_ms=min_silence_ms))


def only_the_answer_reached_the_caller(call: AgentCall) -> agent_pb2.TurnLatency:
    lats = call.record.of("latency")
    assert len(lats) == 1, lats  # one answer was heard
    answered = lats[0].turn_id
    assert {a.turn_id for a in call.record.of("agent_audio")} == {answered}
    assert {t.turn_id for t in call.record.of("agent_text")} == {answered}
    assert {e.turn_id for e in call.record.events() if e.turn_id} <= {answered}
    return lats[0]


@pytest.mark.asyncio(loop_scope="module")
async def test_a_right_preview_is_released_at_the_final(stub, speech_dir) -> None:
    async with AgentCall(stub, config()) as call:
        await ask(call, speech("What is the capital of France?", speech_dir), 1)
        previews = [t for t in call.record.of("user_transcript") if t.speculative]
        assert previews and "capital of france" in previews[-1].text.lower()
        lat = only_the_answer_reached_the_caller(call)
        assert lat.speculation == HIT and lat.speculative and lat.speculation_lead_ms > 0
        assert "paris" in call.record.agent_text().lower()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_wrong_preview_is_voided_without_a_trace(stub, speech_dir) -> None:
    async with AgentCall(stub, config(min_silence_ms=700)) as call:  # the two sentences are one utterance
        await call.stream(speech("Tell me a joke. Tell me a joke.", speech_dir), RATE)
        await call.silence(90, until=lambda: bool(call.record.of("latency")) or call.done.is_set())
        await call.silence(1.0)
        assert call.error is None, call.error
        finals = call.record.finals()
        assert len(finals) == 1 and finals[0].lower().count("joke") == 2
        lat = only_the_answer_reached_the_caller(call)
        assert lat.speculation == MISS and not lat.speculative


@pytest.mark.asyncio(loop_scope="module")
async def test_a_caller_who_resumes_after_a_previewed_pause_leaves_no_trace(stub, speech_dir) -> None:
    async with AgentCall(stub, config(min_silence_ms=1200)) as call:
        await call.stream(speech("What is the capital of", speech_dir), RATE)
        await call.silence(0.8)  # a pause shorter than the endpoint: the preview goes out in it
        await call.stream(speech("France?", speech_dir), RATE)
        await call.silence(90, until=lambda: bool(call.record.of("latency")) or call.done.is_set())
        await call.silence(1.0)
        assert call.error is None, call.error
        previews = [t.text.lower() for t in call.record.of("user_transcript") if t.speculative]
        assert previews and "france" not in previews[0]  # the pause's preview: half a question
        finals = call.record.finals()
        assert len(finals) == 1 and "capital of france" in " ".join(words(finals[0]))  # "capital of? France?"
        only_the_answer_reached_the_caller(call)
        assert "paris" in call.record.agent_text().lower()
