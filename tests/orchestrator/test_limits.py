"""One caller cannot stall the others: bounded turns, truncated tool results, rate limits, fair prefill."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from voxgrid.orchestrator.client import TE, AgentCall, session_config
from voxgrid.orchestrator.limits import TokenBucket, bound_tool_result, user_turn_problem

from tests.orchestrator.conftest import RATE, tone
from tests.orchestrator.fakes import FakeEngine, FakeLlm, FakeStt, tool_call
from voxgrid.v1 import agent_pb2, audio_pb2, llm_pb2

INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


def input_notices(call: AgentCall, code: int) -> list[agent_pb2.SessionNotice]:
    return [n for n in call.record.of("notice") if n.stage == "input" and n.code == code]


def user_contents(llm: FakeLlm) -> list[str]:
    return [m.content for r in llm.requests for m in r.messages if m.role == llm_pb2.ROLE_USER]


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one unit back
    assert bucket.take() and not bucket.take()
    now[0] += 100.0  # never more than the burst
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(4) and TokenBucket(1.0, 5, clock=lambda: 0.0).take(5)


def test_turn_and_tool_result_bounds_say_what_to_do() -> None:
    assert user_turn_problem("typed turn", "x" * 100, 100, 2048) == ""
    too_long = user_turn_problem("typed turn", "x" * 101, 100, 2048)
    assert "101 characters" in too_long and "at most 100" in too_long and "shorter turns" in too_long
    over_budget = user_turn_problem("transcript", "word " * 200, 10_000, 64)
    assert "context budget of 64 tokens" in over_budget and "max_history_tokens" in over_budget
    assert bound_tool_result("short", 10) == "short"
    cut = bound_tool_result("a" * 50, 20)
    assert cut.startswith("a" * 20 + " … [tool result truncated: 20 of 50") and "a" * 21 not in cut


@pytest.mark.e2e
async def test_an_oversize_typed_turn_is_refused_in_band_and_the_call_goes_on(make_stack) -> None:
    short_answer = FakeLlm(reply=lambda messages, tools: "Got it.")
    async with make_stack([], llm=short_answer, max_user_text_chars=500) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            call.send(agent_pb2.ConverseRequest(text="tell me " + "a lot " * 200))
            await call.wait_for(lambda r: bool(input_notices(call, INVALID)))
            notice = input_notices(call, INVALID)[0]
            assert "1207 characters" in notice.message and "at most 500" in notice.message
            call.send(agent_pb2.ConverseRequest(text="x" * 500))  # the largest allowed turn is answered
            await call.wait_for(call.turn_over(1))
            assert user_contents(stack.llm) == ["x" * 500] and call.record.agent_text(1) == "Got it."


@pytest.mark.e2e
async def test_a_turn_over_the_context_budget_is_refused(make_stack) -> None:
    async with make_stack([]) as stack:
        config = session_config(context=agent_pb2.ContextConfig(max_history_tokens=100))
        async with AgentCall(stack.stub, config) as call:
            call.send(agent_pb2.ConverseRequest(text="word " * 120))  # under 4000 chars, over 100 tokens
            await call.wait_for(lambda r: bool(input_notices(call, INVALID)))
            assert "context budget of 100 tokens" in input_notices(call, INVALID)[0].message
            call.send(agent_pb2.ConverseRequest(text="and now a short one"))
            await call.wait_for(call.turn_over(1))
            assert user_contents(stack.llm) == ["and now a short one"]


@pytest.mark.e2e
async def test_unanswered_turns_merge_only_up_to_the_turn_limit(make_stack) -> None:
    """A caller who keeps typing over an answer that has not started yet grows one user message only as far
    as a single turn may be; past that the turns stay separate and the oldest leave the window first."""
    async with make_stack([], llm=FakeLlm(reply=lambda m, t: "Fine.", ttft_s=0.5), max_user_text_chars=60) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            for word in ("first", "second", "third"):
                call.send(agent_pb2.ConverseRequest(text=f"this is my {word} message of about forty chars"))
            await call.wait_for(call.turn_over(3))
            last = user_contents(stack.llm)[-3:]
            assert all(len(c) <= 60 for c in user_contents(stack.llm)), user_contents(stack.llm)
            assert [c.split()[3] for c in last] == ["first", "second", "third"]


@pytest.mark.e2e
async def test_an_oversize_transcript_is_refused_and_the_next_utterance_answered(make_stack) -> None:
    monologue = "and then " * 40  # 360 characters
    async with make_stack([monologue, "what time is it"], max_transcript_chars=300) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            await call.stream(tone(1.0), RATE)
            await call.silence(0.6)
            await call.wait_for(lambda r: bool(input_notices(call, INVALID)))
            assert "transcript is 359 characters" in input_notices(call, INVALID)[0].message
            await call.stream(tone(1.0), RATE)
            await call.silence(0.6)
            await call.wait_for(lambda r: "You said what time is it." in r.agent_text())
            assert user_contents(stack.llm) == ["what time is it"]
            assert not any(monologue.strip() in c for c in user_contents(stack.llm))


@pytest.mark.e2e
async def test_a_long_tool_result_is_truncated_with_a_marker(make_stack, tmp_path) -> None:
    (tmp_path / "manual.txt").write_text("Opening hours: " + "the shop opens at nine. " * 60 + "\n")

    def reply(messages, tools):
        if messages[-1].role == llm_pb2.ROLE_USER and tools:
            return tool_call("lookup", query="opening hours")
        return "It opens at nine."

    tool = agent_pb2.AgentTool(schema=audio_pb2.ToolSchema(name="lookup", description="Search"),
                               knowledge_collection="default")
    async with make_stack([], llm=FakeLlm(reply=reply), knowledge_dir=tmp_path, max_tool_result_chars=200) as stack:
        async with AgentCall(stack.stub, session_config(tools=[tool])) as call:
            call.send(agent_pb2.ConverseRequest(text="when do you open"))
            await call.wait_for(call.turn_over(1))
            result = next(m.content for m in stack.llm.requests[-1].messages if m.role == llm_pb2.ROLE_TOOL)
            assert result.startswith("[manual.txt] Opening hours") and "[tool result truncated: 200 of " in result
            assert len(result) < 260


@pytest.mark.e2e
async def test_a_flood_of_control_messages_is_refused_in_band_and_the_call_goes_on(make_stack) -> None:
    async with make_stack([], control_per_s=2.0, control_burst=5) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            for _ in range(40):
                call.interrupt()
            await call.wait_for(lambda r: len(input_notices(call, EXHAUSTED)) >= 20)
            assert "at most 2 per second" in input_notices(call, EXHAUSTED)[0].message
            await asyncio.sleep(1.0)  # the bucket refills
            call.send(agent_pb2.ConverseRequest(text="are you still there"))
            await call.wait_for(call.turn_over(1))
            assert "You said are you still there." in call.record.agent_text(1)


NEIGHBOUR_TEXT = "Please read all of this carefully. " + "word " * 793  # 4000 characters: the largest allowed


def answer(messages, tools) -> str:
    return "Noted." if len(messages[-1].content) > 1000 else "Paris, of course. It is the capital of France."


async def good_caller_v2v(make_stack, chunk_tokens: int) -> tuple[float, float]:
    """The good caller's voice-to-voice alone (turn 1), then while a neighbour's largest allowed typed
    turn is being read by the same LLM (turn 2). The fake LLM reads prompts at 1 ms per token and decodes
    a step in 20 ms, one scheduler for every stream, so what differs between the two turns is scheduling."""
    engine = FakeEngine(s_per_prompt_token=0.001, step_s=0.02, chunk_tokens=chunk_tokens)
    stt = FakeStt(["what is the capital of france"] * 2)
    async with make_stack([], stt=stt, llm=FakeLlm(reply=answer, engine=engine)) as stack:
        async with AgentCall(stack.stub, session_config()) as good, \
                AgentCall(stack.stub, session_config()) as neighbour:
            await good.stream(tone(1.0), RATE)
            await good.silence(0.6)
            await good.wait_for(good.turn_over(1))
            await good.stream(tone(1.0), RATE)
            neighbour.send(agent_pb2.ConverseRequest(text=NEIGHBOUR_TEXT))  # as the good caller falls silent
            await good.silence(0.6)
            await good.wait_for(good.turn_over(2))
            await neighbour.wait_for(lambda r: bool(r.events(TE.KIND_AGENT_STARTED_SPEAKING)))
            assert not neighbour.record.of("notice") and len(NEIGHBOUR_TEXT.strip()) <= 4000
            alone, beside = (lat.voice_to_voice_ms for lat in good.record.of("latency"))
    return alone, beside


@pytest.mark.e2e
async def test_a_neighbours_largest_turn_does_not_stall_a_good_callers_answer(make_stack) -> None:
    """Stated factor: with chunked prefill the good caller's voice-to-voice beside the neighbour stays
    within 1.6x of its voice-to-voice alone. The control run without chunking shows the test can fail:
    there the good caller waits for the neighbour's whole prompt (about a second)."""
    alone, beside = await good_caller_v2v(make_stack, chunk_tokens=32)
    assert beside <= 1.6 * alone, (alone, beside)
    alone_whole, beside_whole = await good_caller_v2v(make_stack, chunk_tokens=0)
    assert beside_whole >= 2.0 * alone_whole, (alone_whole, beside_whole)
