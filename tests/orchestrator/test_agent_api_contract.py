"""The Agent API's contract with applications, over real loopback gRPC with the fake backends.

A client handles problems by code and ErrorInfo reason (BadRequest naming the field, RetryInfo for a
full replica, google.rpc.Status + a typed stage in-stream), learns its session id and effective
configuration from the first response, and follows tool calls, text (delta or final) and the state enum.
"""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from voxgrid.orchestrator.client import TE, AgentCall, describe, session_config

from tests.orchestrator.fakes import FakeLlm, echo_reply, tool_call
from voxgrid.errors import Reason, from_status
from voxgrid.v1 import agent_pb2, audio_pb2, llm_pb2

pytestmark = pytest.mark.e2e

_BAD_TOOL = agent_pb2.AgentTool(schema=audio_pb2.ToolSchema(name="t", parameters_json="{"),
                                http_url="http://127.0.0.1:1/")
# (config, code, reason, field the BadRequest names)
BAD_CONFIGS = [
    (session_config(sampling=audio_pb2.SamplingParams(temperature=3)), grpc.StatusCode.INVALID_ARGUMENT,
     Reason.INVALID_CONFIG, "config.sampling.temperature"),
    (session_config(rate=44100), grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_CONFIG,
     "config.input_format.sample_rate_hz"),
    (session_config(tools=[_BAD_TOOL]), grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_CONFIG,
     "config.tools[0].schema.parameters_json"),
    (session_config(voice="nobody"), grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_CONFIG, "config.voice"),
    (session_config(profile="nobody"), grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_CONFIG, "config.profile"),
    (session_config(mode=agent_pb2.AGENT_MODE_DUPLEX), grpc.StatusCode.FAILED_PRECONDITION,
     Reason.NOT_CONFIGURED, "config.mode"),
]


async def test_config_errors_carry_a_reason_and_name_the_field(make_stack) -> None:
    async with make_stack([]) as stack:
        for config, code, reason, field in BAD_CONFIGS:
            async with AgentCall(stack.stub, config) as call:
                await asyncio.wait_for(call.done.wait(), 15)
                err = call.error_details
                assert err is not None and err.code == code, describe(err)
                assert (err.reason, err.domain) == (reason, "voxgrid.dev"), describe(err)
                assert err.fields == [field], describe(err)
                assert err.field_violations[0].description == call.error.details()
                assert err.retry_after_s is None
                assert call.record.responses == []  # refused before any work: not even session_started
        assert stack.llm.requests == []


async def test_a_full_orchestrator_says_when_to_retry(make_stack) -> None:
    async with make_stack([], max_sessions=1) as stack:
        async with AgentCall(stack.stub, session_config()) as first:
            await first.wait_started()
            async with AgentCall(stack.stub, session_config()) as second:
                with pytest.raises(RuntimeError, match="REPLICA_FULL"):
                    await second.wait_started()  # the call failed first
                err = second.error_details
                assert err is not None and err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert err.reason == Reason.REPLICA_FULL and err.retry_after_s == 1.0
                assert dict(second.error.trailing_metadata())["retry-after-ms"] == "1000"  # deprecated
                assert "retry after 1 s" in describe(err)


async def test_a_stage_down_at_start_is_stage_unavailable_naming_it(make_stack) -> None:
    async with make_stack([]) as stack:
        await stack.servers["tts"].stop()
        async with AgentCall(stack.stub, session_config()) as call:
            await asyncio.wait_for(call.done.wait(), 15)
            err = call.error_details
            assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason == Reason.STAGE_UNAVAILABLE
            assert err.metadata == {"stage": "tts"}


async def test_the_first_response_is_session_started_with_the_effective_config(make_stack) -> None:
    tool = agent_pb2.AgentTool(schema=audio_pb2.ToolSchema(name="lookup"), http_url="http://127.0.0.1:1/")
    async with make_stack([], max_tokens=77, max_history_tokens=999) as stack:
        async with AgentCall(stack.stub, session_config(tools=[tool])) as call:
            started = await call.wait_started()
            call.send(agent_pb2.ConverseRequest(text="hello"))
            await call.wait_for(call.turn_over(1))
            assert call.record.responses[0][1].WhichOneof("event") == "session_started"
            assert sum(r.HasField("session_started") for _, r in call.record.responses) == 1
            # The server chose the id (the config had none) and says which.
            assert len(started.session_id) == 12 and started.config.session_id == started.session_id
            eff = started.config
            assert eff.mode == agent_pb2.AGENT_MODE_PIPELINE
            assert eff.system_prompt.startswith("You are a helpful voice assistant")
            assert eff.language == "en" and eff.speed == 1.0
            assert eff.output_format == eff.input_format
            assert eff.sampling.max_tokens == 77 and not eff.sampling.HasField("temperature")
            assert (eff.turn_taking.min_interruption_words, eff.turn_taking.min_interruption_ms,
                    eff.turn_taking.allow_interruptions) == (2, 400, True)
            assert eff.context.max_history_tokens == 999
            assert (eff.tools[0].timeout_ms, eff.tools[0].filler_after_ms) == (5000, 700)
            assert started.version and started.server
            # What the session ran with is what it reported: the LLM got that persona and cap.
            request = stack.llm.requests[-1]
            assert request.messages[0].content.startswith(eff.system_prompt[:40])
            assert request.sampling.max_tokens == 77
        # A client-chosen id comes back unchanged, explicit values are kept.
        config = session_config(session_id="call-42", system_prompt="", language="de",
                                turn_taking=agent_pb2.TurnTakingConfig(min_interruption_words=5))
        async with AgentCall(stack.stub, config) as call:
            started = await call.wait_started()
            assert started.session_id == "call-42"
            assert started.config.system_prompt == "" and started.config.HasField("system_prompt")
            assert started.config.language == "de" and started.config.turn_taking.min_interruption_words == 5


async def test_session_started_reports_the_profile_merged_under_the_session(make_stack, tmp_path) -> None:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("sales:\n  systemPrompt: You sell.\n  speed: 1.25\n  sampling: {temperature: 0.4}\n")
    async with make_stack([], profiles_file=profiles) as stack:
        config = session_config(profile="sales", sampling=audio_pb2.SamplingParams(max_tokens=33))
        async with AgentCall(stack.stub, config) as call:
            eff = (await call.wait_started()).config
            assert (eff.profile, eff.system_prompt, eff.speed) == ("sales", "You sell.", 1.25)
            assert eff.sampling.temperature == pytest.approx(0.4) and eff.sampling.max_tokens == 33


async def test_in_stream_problems_carry_a_status_and_a_typed_stage(make_stack) -> None:
    def reply(messages, tools):
        if messages[-1].role == llm_pb2.ROLE_USER and "weather" in messages[-1].content:
            return tool_call("weather", city="Paris")
        return echo_reply(messages, tools)

    llm = FakeLlm(reply=reply)
    tool = agent_pb2.AgentTool(schema=audio_pb2.ToolSchema(name="weather"), http_url="http://127.0.0.1:9/x",
                               timeout_ms=1000)
    async with make_stack([], llm=llm, max_user_text_chars=100) as stack:
        async with AgentCall(stack.stub, session_config(tools=[tool])) as call:
            call.send(agent_pb2.ConverseRequest(text="x" * 101))  # over the size limit: refused in-band
            await call.wait_for(lambda r: bool(r.of("notice")))
            notice, err = call.record.notices()[0]
            assert notice.stage_kind == agent_pb2.NOTICE_STAGE_INPUT and notice.stage == "input"
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason == Reason.INPUT_TOO_LARGE
            assert (notice.code, notice.message) == (notice.status.code, notice.status.message)  # deprecated twins
            call.send(agent_pb2.ConverseRequest(text="weather in Paris?"))
            await call.wait_for(call.turn_over(1))
            tool_notices = [(n, d) for n, d in call.record.notices() if n.stage_kind == agent_pb2.NOTICE_STAGE_TOOL]
            assert tool_notices, call.record.of("notice")
            notice, err = tool_notices[0]
            assert notice.tool_name == "weather" and notice.stage == "tool:weather"
            assert err.reason == Reason.TOOL_FAILED and err.domain == "voxgrid.dev"
            assert any(e.kind == TE.KIND_TOOL_CALL_FINISHED for e in call.record.events())


async def test_tool_events_carry_the_call_and_text_says_delta_or_final(make_stack, tmp_path) -> None:
    (tmp_path / "faq.txt").write_text("Opening hours\n\nThe shop opens at nine in the morning on weekdays.\n")

    def reply(messages, tools):
        last = messages[-1]
        if last.role == llm_pb2.ROLE_USER and "open" in last.content:
            return tool_call("lookup", query="when does the shop open")
        if last.role == llm_pb2.ROLE_USER and "weather" in last.content:
            return tool_call("weather", city="Paris")
        return echo_reply(messages, tools)

    tools = [agent_pb2.AgentTool(schema=audio_pb2.ToolSchema(name="lookup"), knowledge_collection="default"),
             agent_pb2.AgentTool(schema=audio_pb2.ToolSchema(name="weather"), http_url="http://127.0.0.1:9/x",
                                 timeout_ms=1000)]
    async with make_stack([], llm=FakeLlm(reply=reply), knowledge_dir=tmp_path) as stack:
        async with AgentCall(stack.stub, session_config(tools=tools)) as call:
            call.send(agent_pb2.ConverseRequest(text="when do you open?"))
            await call.wait_for(call.turn_over(1))
            call.send(agent_pb2.ConverseRequest(text="and the weather?"))
            await call.wait_for(call.turn_over(2))
            rec = call.record
            started = rec.events(TE.KIND_TOOL_CALL_STARTED)
            finished = rec.events(TE.KIND_TOOL_CALL_FINISHED)
            assert [e.tool_call.name for e in started] == [e.tool_call.name for e in finished] == ["lookup", "weather"]
            ok, failed = finished
            assert started[0].tool_call.call_id == ok.tool_call.call_id == "call-lookup"
            assert json.loads(started[0].tool_call.arguments_json) == {"query": "when does the shop open"}
            assert "opens at nine" in ok.tool_call.result and not ok.tool_call.HasField("error")
            assert ok.tool_call.duration_ms >= 0 and failed.tool_call.duration_ms > 0
            assert failed.tool_call.result == "" and failed.tool_call.HasField("error")
            err = from_status(failed.tool_call.error)
            assert err.reason == Reason.TOOL_FAILED and "weather failed" in err.message
            assert started[0].session_state == agent_pb2.SESSION_STATE_CALLING_TOOL
            assert started[0].state == "calling_tool"  # the deprecated string, still filled
            # Text: deltas, then one final per turn carrying the whole text and no delta.
            for turn_id in (1, 2):
                texts = [t for t in rec.of("agent_text") if t.turn_id == turn_id]
                assert [t.is_final for t in texts].count(True) == 1 and texts[-1].is_final
                assert texts[-1].text == "" and texts[-1].full_text == rec.agent_text(turn_id)
            assert "opens at nine" in rec.agent_text(1)
            for event in rec.events():
                assert agent_pb2.SessionState.Name(event.session_state) == f"SESSION_STATE_{event.state.upper()}"
