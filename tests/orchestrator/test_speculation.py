"""Speculative answers against the final: released when the words agree, dropped without a trace when not.

A fast STT preview (EndpointingConfig.fast_preview) is a cheaper decode than the final and may differ from
it; the orchestrator compares the two by their words (case, punctuation and spacing aside). The STT here
is a deterministic stand-in over loopback gRPC whose preview text the test chooses; the same paths with
the real tiny.en model are in tests/e2e/test_speculation_real.py.
"""

from __future__ import annotations

import pytest
from voxgrid.orchestrator.client import TE, AgentCall, session_config

from tests.orchestrator.conftest import RATE, tone
from tests.orchestrator.fakes import FakeLlm, FakeStt
from voxgrid.v1 import agent_pb2, llm_pb2

pytestmark = pytest.mark.e2e


async def test_a_preview_with_the_same_words_is_released_and_the_history_keeps_the_final(make_stack) -> None:
    stt = FakeStt(["what is the time"], preview_after_ms=100, preview_of=lambda t: t.upper() + "?")
    async with make_stack([], stt=stt, llm=FakeLlm(ttft_s=0.05, token_delay_s=0.02)) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            await call.stream(tone(1.0), RATE)
            await call.silence(10, until=lambda: call.turn_over(1)(call.record))
            latency = call.record.of("latency")[0]
            assert latency.speculative and latency.speculation == agent_pb2.SPECULATION_OUTCOME_HIT
            assert latency.speculation_lead_ms > 0
            assert len(stack.llm.requests) == 1 and stack.llm.cancels == 0
            # The answer was written from the preview's text; the history keeps the final's.
            assert stack.llm.requests[0].messages[-1].content == "WHAT IS THE TIME?"
            assert "WHAT IS THE TIME?" in call.record.agent_text(1)  # shown once confirmed, whole
            call.send(agent_pb2.ConverseRequest(text="and tomorrow"))
            await call.wait_for(call.turn_over(2))
            users = [m.content for m in stack.llm.requests[-1].messages if m.role == llm_pb2.ROLE_USER]
            assert users == ["what is the time", "and tomorrow"]


async def test_a_preview_with_other_words_is_voided_without_a_trace(make_stack) -> None:
    stt = FakeStt(["what is the time"], preview_after_ms=100, preview_of=lambda t: t + " in paris")
    async with make_stack([], stt=stt, llm=FakeLlm(ttft_s=0.05, token_delay_s=0.02)) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            await call.stream(tone(1.0), RATE)
            await call.silence(10, until=lambda: bool(call.record.events(TE.KIND_AGENT_STOPPED_SPEAKING)))
            lats = call.record.of("latency")
            assert len(lats) == 1  # the caller heard one answer: the final's
            assert lats[0].speculation == agent_pb2.SPECULATION_OUTCOME_MISS and not lats[0].speculative
            assert lats[0].speculation_lead_ms > 0
            assert stack.llm.cancels == 1 and len(stack.llm.requests) == 2
            users = [m.content for m in stack.llm.requests[-1].messages if m.role == llm_pb2.ROLE_USER]
            assert users == ["what is the time"]
            # Nothing of the prepared answer reached the caller: no audio, no text, no turn event.
            answered = lats[0].turn_id
            assert {a.turn_id for a in call.record.of("agent_audio")} == {answered}
            assert {t.turn_id for t in call.record.of("agent_text")} == {answered}
            assert "in paris" not in call.record.agent_text()
            assert not call.record.events(TE.KIND_INTERRUPTED)
