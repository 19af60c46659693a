"""The orchestrator's behaviour pinned with deterministic backends over real loopback gRPC."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from voxgrid.orchestrator.client import TE, AgentCall, session_config

from tests.orchestrator.conftest import RATE, tone
from tests.orchestrator.fakes import FakeLlm, FakeStt, FakeTts, echo_reply, tool_call
from voxgrid.v1 import agent_pb2, audio_pb2, llm_pb2

pytestmark = pytest.mark.e2e


async def say(call: AgentCall, seconds: float = 1.0) -> None:
    await call.stream(tone(seconds), RATE)
    await call.silence(0.5)


async def test_two_turn_conversation_with_latency_records_and_history(make_stack) -> None:
    async with make_stack(["what time is it", "and tomorrow"]) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            await say(call)
            await call.wait_for(call.turn_over(1))
            await say(call)
            await call.wait_for(call.turn_over(2))
            rec = call.record
            assert rec.finals() == ["what time is it", "and tomorrow"]
            assert "You said what time is it." in rec.agent_text(1)
            assert "You said and tomorrow." in rec.agent_text(2)
            kinds = [e.kind for e in rec.events()]
            assert kinds.index(TE.KIND_USER_STARTED_SPEAKING) < kinds.index(TE.KIND_USER_STOPPED_SPEAKING) \
                < kinds.index(TE.KIND_AGENT_STARTED_SPEAKING) < kinds.index(TE.KIND_AGENT_STOPPED_SPEAKING)
            latencies = rec.of("latency")
            assert [lat.turn_id for lat in latencies] == [1, 2]
            for lat in latencies:
                parts = (lat.endpoint_wait_ms + lat.stt_finalization_ms + lat.llm_time_to_first_token_ms
                         + lat.tts_time_to_first_audio_ms + lat.tool_ms + lat.orchestration_overhead_ms)
                assert lat.voice_to_voice_ms == pytest.approx(parts, abs=0.01)
                assert lat.endpoint_wait_ms >= 250  # the fake endpointer waits 300 ms of silence
            # The second request carries the first exchange: the agent remembers.
            second = stack.llm.requests[-1].messages
            roles = [m.role for m in second]
            assert roles == [llm_pb2.ROLE_SYSTEM, llm_pb2.ROLE_USER, llm_pb2.ROLE_ASSISTANT, llm_pb2.ROLE_USER]
            assert second[2].content.startswith("You said what time is it.")
            # Audio: the whole answer was sent, in the session's format, with marks in order.
            audio = rec.of("agent_audio")
            assert audio and all(a.turn_id in (1, 2) for a in audio)
            ends = [a.mark.text_end for a in audio if a.turn_id == 1]
            assert ends == sorted(ends)
            # The persona was prefilled when the call started, before the caller said anything; partials of
            # the first utterance then extended the LLM's prefix while the caller spoke.
            persona, *partials = stack.llm.prewarm_requests
            assert [m.role for m in persona.messages] == [llm_pb2.ROLE_SYSTEM]
            assert partials and [m.role for m in partials[0].messages] == [llm_pb2.ROLE_SYSTEM, llm_pb2.ROLE_USER]


async def test_barge_in_cancels_at_once_trims_history_and_answers_the_new_question(make_stack) -> None:
    long_answer = ("Let me tell you a long story about the history of this city, which was founded long ago, "
                   "grew slowly through the centuries, and became famous for its bridges and its markets.")

    def reply(messages, tools):
        return long_answer if "story" in messages[-1].content else echo_reply(messages, tools)

    async with make_stack(["tell me a story", "stop that please now", ]) as stack:
        stack.llm.reply = reply
        async with AgentCall(stack.stub, session_config()) as call:
            await say(call)
            await call.wait_for(lambda r: any(e.kind == TE.KIND_AGENT_STARTED_SPEAKING for e in r.events()))
            await call.silence(1.5)  # the caller listens to part of the story
            await call.stream(tone(1.2), RATE)  # ... then talks over it
            await call.wait_for(lambda r: r.events(TE.KIND_INTERRUPTED), timeout_s=10)
            await call.silence(0.6)
            await call.wait_for(call.turn_over(2))
            interrupted = call.record.events(TE.KIND_INTERRUPTED)[0]
            heard = interrupted.heard_text
            assert heard and long_answer.startswith(heard) and len(heard) < len(long_answer) / 2
            # No audio of turn 1 went out after the interruption was announced, though TTS had made more.
            kinds = [(r.WhichOneof("event"), r) for _, r in call.record.responses]
            cut = next(i for i, (k, r) in enumerate(kinds)
                       if k == "turn_event" and r.turn_event.kind == TE.KIND_INTERRUPTED)
            assert not [r for k, r in kinds[cut:] if k == "agent_audio" and r.agent_audio.turn_id == 1]
            sent_ms = sum(len(r.agent_audio.data) / 32 for k, r in kinds[:cut] if k == "agent_audio")
            assert sent_ms < len(long_answer) * FakeTts().ms_per_char / 2
            # History keeps what the caller heard, not what the LLM wrote.
            msgs = stack.llm.requests[-1].messages
            assistant = [m.content for m in msgs if m.role == llm_pb2.ROLE_ASSISTANT]
            assert assistant == [heard + " —"]
            assert msgs[-1].content == "stop that please now"
            assert "You said stop that please now." in call.record.agent_text(2)


async def test_a_backchannel_while_the_agent_speaks_is_not_an_interruption(make_stack) -> None:
    answer = "Here is a rather long answer that keeps going for a while, so the caller can nod along to it."
    async with make_stack(["question", "uh-huh"], llm=FakeLlm(reply=lambda m, t: answer)) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            await say(call)
            await call.wait_for(lambda r: any(e.kind == TE.KIND_AGENT_STARTED_SPEAKING for e in r.events()))
            await call.silence(0.5)
            await call.stream(tone(0.25), RATE)  # a short "uh-huh"
            await call.silence(8.0, until=lambda: bool(call.record.events(TE.KIND_AGENT_STOPPED_SPEAKING)))
            await call.wait_for(call.turn_over(1))
            assert not call.record.events(TE.KIND_INTERRUPTED)
            assert len(stack.llm.requests) == 1


async def test_tool_call_round_trip_through_the_knowledge_base(make_stack, tmp_path) -> None:
    (tmp_path / "faq.txt").write_text("Opening hours\n\nThe shop opens at nine in the morning on weekdays.\n\n"
                                      "Parking\n\nThere is free parking behind the building.\n")

    def reply(messages, tools):
        if messages[-1].role == llm_pb2.ROLE_USER and tools:
            return tool_call("lookup", query="when does the shop open")
        return echo_reply(messages, tools)

    tool = agent_pb2.AgentTool(schema=audio_pb2.ToolSchema(name="lookup", description="Search the FAQ"),
                               knowledge_collection="default")
    async with make_stack(["when do you open"], llm=FakeLlm(reply=reply), knowledge_dir=tmp_path) as stack:
        async with AgentCall(stack.stub, session_config(tools=[tool])) as call:
            await say(call)
            await call.wait_for(call.turn_over(1))
            assert [e.tool_name for e in call.record.events(TE.KIND_TOOL_CALL_FINISHED)] == ["lookup"]
            assert "opens at nine" in call.record.agent_text(1)
            tool_msg = next(m for m in stack.llm.requests[-1].messages if m.role == llm_pb2.ROLE_TOOL)
            assert "opens at nine" in tool_msg.content and tool_msg.tool_call_id == "call-lookup"
            schema = json.loads(stack.llm.requests[0].tools[0].parameters_json)
            assert schema["required"] == ["query"]


async def test_a_failing_tool_is_spoken_about_and_the_session_goes_on(make_stack) -> None:
    def reply(messages, tools):
        if messages[-1].role == llm_pb2.ROLE_USER and tools and "weather" in messages[-1].content:
            return tool_call("weather", city="Paris")
        return echo_reply(messages, tools)

    tool = agent_pb2.AgentTool(schema=audio_pb2.ToolSchema(name="weather", description="Weather"),
                               http_url="http://127.0.0.1:9/unreachable", timeout_ms=1000)
    async with make_stack(["weather in paris", "thanks"], llm=FakeLlm(reply=reply)) as stack:
        async with AgentCall(stack.stub, session_config(tools=[tool])) as call:
            await say(call)
            await call.wait_for(call.turn_over(1))
            assert "error: weather failed" in call.record.agent_text(1)
            assert any(n.stage == "tool:weather" for n in call.record.of("notice"))
            await say(call)
            await call.wait_for(call.turn_over(2))
            assert "You said thanks." in call.record.agent_text(2)


@pytest.mark.parametrize(("config", "code", "message"), [
    (session_config(rate=44100), grpc.StatusCode.INVALID_ARGUMENT, "44100 is not supported"),
    (session_config(voice="nobody"), grpc.StatusCode.INVALID_ARGUMENT, "available: fake-voice"),
    (session_config(tools=[agent_pb2.AgentTool(schema=audio_pb2.ToolSchema(name="kb"), knowledge_collection="x")]),
     grpc.StatusCode.INVALID_ARGUMENT, "unknown knowledge collection 'x'"),
    (session_config(tools=[agent_pb2.AgentTool(schema=audio_pb2.ToolSchema(name="t", parameters_json="{"),
                                               http_url="http://127.0.0.1:1/")]),
     grpc.StatusCode.INVALID_ARGUMENT, "not valid JSON"),
    (session_config(mode=agent_pb2.AGENT_MODE_DUPLEX), grpc.StatusCode.FAILED_PRECONDITION, "duplex_backends"),
    (session_config(sampling=audio_pb2.SamplingParams(temperature=3)), grpc.StatusCode.INVALID_ARGUMENT,
     "temperature 3"),
])
async def test_config_errors_are_refused_before_any_work(make_stack, config, code, message) -> None:
    async with make_stack([]) as stack:
        async with AgentCall(stack.stub, config) as call:
            await call.done.wait()
            assert call.error is not None and call.error.code() == code
            assert message in call.error.details()
        assert stack.llm.requests == []


async def test_a_backend_down_at_start_names_the_stage(make_stack) -> None:
    async with make_stack([]) as stack:
        await stack.servers["tts"].stop()
        async with AgentCall(stack.stub, session_config()) as call:
            await asyncio.wait_for(call.done.wait(), 15)
            assert call.error.code() == grpc.StatusCode.UNAVAILABLE
            assert call.error.details().startswith("tts stage")
        # the stages that did open were closed again
        await asyncio.sleep(0.2)
        assert stack.servers["stt"].gate.active == 0 and stack.servers["llm"].gate.active == 0


async def test_client_disconnect_closes_every_backend_stream(make_stack) -> None:
    async with make_stack(["hello"], tts=FakeTts(ms_per_char=200)) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            await say(call)
            await call.wait_for(lambda r: any(e.kind == TE.KIND_AGENT_STARTED_SPEAKING for e in r.events()))
            assert all(s.gate.active == 1 for s in stack.servers.values())
        for _ in range(50):
            if all(s.gate.active == 0 for s in stack.servers.values()) and stack.orchestrator.gate.active == 0:
                break
            await asyncio.sleep(0.1)
        assert {n: s.gate.active for n, s in stack.servers.items()} == {"stt": 0, "llm": 0, "tts": 0}
        assert stack.orchestrator.gate.active == 0


async def test_typed_text_turns_and_bad_audio(make_stack) -> None:
    async with make_stack([]) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            call.send(agent_pb2.ConverseRequest(text="hello there"))
            await call.wait_for(call.turn_over(1))
            assert "You said hello there." in call.record.agent_text(1)
            call.send_audio(b"\x00\x01\x02")
            await asyncio.wait_for(call.done.wait(), 5)
            assert call.error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a whole number" in call.error.details()


async def test_a_speculative_answer_is_released_at_the_endpoint(make_stack) -> None:
    stt = FakeStt(["what is the time"], preview_after_ms=100)
    async with make_stack([], stt=stt, llm=FakeLlm(ttft_s=0.1, token_delay_s=0.02)) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            t_end = await call.stream(tone(1.0), RATE)
            await call.silence(10, until=lambda: call.turn_over(1)(call.record))
            latency = call.record.of("latency")[0]
            assert latency.speculative
            first_audio = next(t for t, r in call.record.responses if r.WhichOneof("event") == "agent_audio")
            endpoint = next(t for t, r in call.record.responses if r.WhichOneof("event") == "turn_event"
                            and r.turn_event.kind == TE.KIND_USER_STOPPED_SPEAKING)
            # No agent audio before the endpoint, though the answer was ready long before...
            assert first_audio >= endpoint
            # ...and it arrives right after: the LLM's 100 ms to first token was hidden in the silence.
            assert latency.voice_to_voice_ms < latency.endpoint_wait_ms + latency.llm_time_to_first_token_ms
            assert first_audio - t_end < 1.0
            assert len(stack.llm.requests) == 1


async def test_a_caller_who_resumes_after_a_pause_voids_the_speculative_answer(make_stack) -> None:
    stt = FakeStt(["i would like to book a table for two"], preview_after_ms=100)
    async with make_stack([], stt=stt, llm=FakeLlm(ttft_s=0.05, token_delay_s=0.05)) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            await call.stream(tone(0.6), RATE)
            await call.silence(0.2)  # a pause: the preview goes out, the answer starts...
            await call.stream(tone(0.6), RATE)  # ...but the caller goes on
            await call.silence(10, until=lambda: bool(call.record.events(TE.KIND_AGENT_STOPPED_SPEAKING)))
            assert stack.llm.cancels == 1 and len(stack.llm.requests) == 2
            assert not call.record.events(TE.KIND_INTERRUPTED)
            assert len(call.record.of("latency")) == 1  # the caller heard one answer
            users = [m for m in stack.llm.requests[-1].messages if m.role == llm_pb2.ROLE_USER]
            assert [u.content for u in users] == ["i would like to book a table for two"]
            turn_ids = {a.turn_id for a in call.record.of("agent_audio")}
            assert turn_ids == {2}  # nothing of the voided answer was played


async def test_callers_who_hang_up_at_once_leave_nothing_behind(make_stack) -> None:
    # grpc.aio can abandon a handler cancelled in its first milliseconds without closing it; the RPC's
    # done callbacks must still free the admission slot, the session and its backend streams.
    async with make_stack([]) as stack:
        for delay in (0.0, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05):
            for _ in range(3):
                async with AgentCall(stack.stub, session_config()):
                    await asyncio.sleep(delay)
        for _ in range(50):
            gates = [stack.orchestrator.gate.active, *(s.gate.active for s in stack.servers.values())]
            if not any(gates):
                break
            await asyncio.sleep(0.1)
        assert gates == [0, 0, 0, 0]
        assert not [t for t in asyncio.all_tasks() if "Playout" in repr(t)]
