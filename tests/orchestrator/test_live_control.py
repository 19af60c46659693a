"""Live control (update / say / add_message), usage reports and idle handling, over real loopback gRPC
with the fake backends: what an application can change mid-call, and what each refusal looks like."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import numpy as np
import pytest
from voxgrid.orchestrator.app import AgentRuntime
from voxgrid.orchestrator.client import TE, AgentCall, session_config
from voxgrid.orchestrator.profiles import ProfileError, parse_profile
from voxgrid.orchestrator.settings import Settings
from voxgrid.orchestrator.talk import Script, parse_message, parse_update, summary, talk

from tests.orchestrator.conftest import RATE, tone
from tests.orchestrator.fakes import FakeDuplex, FakeLlm, FakeTts, backend_settings, duplex_runtime, prompt_tokens
from voxgrid.audio import AudioOut
from voxgrid.client import channel
from voxgrid.errors import Reason
from voxgrid.server.chassis import start_server
from voxgrid.v1 import agent_pb2, agent_pb2_grpc, audio_pb2, llm_pb2

pytestmark = pytest.mark.e2e

LONG = "This is a recorded notice about how your call may be monitored for quality."  # ~4.5 s of fake speech


def persona_reply(messages, tools):
    """Says which persona it was given (first word of the system prompt) and what it was told."""
    return f"{messages[0].content.split()[0]} answers {messages[-1].content}."


def assistant_history(stack) -> list[str]:
    return [m.content for m in stack.llm.requests[-1].messages if m.role == llm_pb2.ROLE_ASSISTANT]


async def speak_over(call: AgentCall, turn_id: int) -> None:
    """Wait until the agent speaks `turn_id`, then talk over it (the fake STT hears the tone)."""
    await call.wait_for(lambda r: any(e.turn_id == turn_id for e in r.events(TE.KIND_AGENT_STARTED_SPEAKING)))
    await asyncio.sleep(0.6)
    await call.stream(tone(0.8), RATE)
    await call.silence(0.5)


async def test_update_changes_the_next_answer_and_is_acknowledged(make_stack, tmp_path) -> None:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("pirate:\n  systemPrompt: Pirate persona.\n  voice: fake-voice\n"
                        "  sampling: {temperature: 0.3}\n")
    async with make_stack([], llm=FakeLlm(reply=persona_reply), profiles_file=profiles) as stack:
        async with AgentCall(stack.stub, session_config(system_prompt="Clerk persona.")) as call:
            call.send(agent_pb2.ConverseRequest(text="hello"))
            await call.wait_for(call.turn_over(1))
            call.update(agent_pb2.SessionConfig(system_prompt="Wizard persona.",
                                                sampling=audio_pb2.SamplingParams(temperature=0.9, top_p=0.5)),
                        "system_prompt", "sampling.temperature")
            await call.wait_for(lambda r: bool(r.of("updated")))
            ack = call.record.of("updated")[0]
            assert list(ack.paths) == ["system_prompt", "sampling.temperature"]
            assert ack.config.system_prompt == "Wizard persona." and ack.config.session_id
            assert ack.config.sampling.temperature == pytest.approx(0.9)
            assert not ack.config.sampling.HasField("top_p")  # only the masked sub-field was taken
            call.send(agent_pb2.ConverseRequest(text="again"))
            await call.wait_for(call.turn_over(2))
            assert call.record.agent_text(1).startswith("Clerk answers hello")
            assert call.record.agent_text(2).startswith("Wizard answers again")
            assert stack.llm.requests[-1].sampling.temperature == pytest.approx(0.9)
            # A profile switch: its persona and sampling replace the session's; its voice cannot change mid-call.
            call.update(agent_pb2.SessionConfig(profile="pirate"), "profile")
            await call.wait_for(lambda r: len(r.of("updated")) == 2)
            ack = call.record.of("updated")[1]
            assert ack.config.profile == "pirate" and list(ack.kept) == ["voice"]
            call.send(agent_pb2.ConverseRequest(text="ahoy"))
            await call.wait_for(call.turn_over(3))
            assert call.record.agent_text(3).startswith("Pirate answers ahoy")
            assert stack.llm.requests[-1].sampling.temperature == pytest.approx(0.3)
            assert call.record.notices() == []


async def test_a_voice_update_applies_from_the_next_turn(make_stack) -> None:
    tts = FakeTts()
    tts.voices = ("fake-voice", "other-voice")
    async with make_stack([], tts=tts) as stack:
        async with AgentCall(stack.stub, session_config(voice="fake-voice")) as call:
            call.say(LONG)  # the turn being spoken keeps its voice
            await call.wait_for(lambda r: bool(r.events(TE.KIND_AGENT_STARTED_SPEAKING)))
            call.update(agent_pb2.SessionConfig(voice="other-voice", speed=1.2), "voice", "speed")
            await call.wait_for(lambda r: bool(r.of("updated")))
            ack = call.record.of("updated")[0]
            assert ack.config.voice == "other-voice" and ack.config.speed == pytest.approx(1.2)
            assert [c.voice for c in stack.tts.configs] == ["fake-voice", "other-voice"]
            await call.wait_for(call.turn_over(1), timeout_s=15)
            assert call.record.events(TE.KIND_INTERRUPTED) == []
            sent_1 = sum(len(a.data) for a in call.record.of("agent_audio") if a.turn_id == 1) / (2 * RATE)
            assert sent_1 == pytest.approx(len(LONG) * 0.060, abs=0.15)  # all of it, on the old stream
            call.send(agent_pb2.ConverseRequest(text="hello"))
            await call.wait_for(call.turn_over(2))
            assert call.record.agent_text(2) and [a for a in call.record.of("agent_audio") if a.turn_id == 2]
            assert stack.tts.configs[-1].speed == pytest.approx(1.2)
            call.update(agent_pb2.SessionConfig(voice="nobody"), "voice")
            await call.wait_for(lambda r: bool(r.of("notice")))
            _, err = call.record.notices()[0]
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.fields == ["update.config.voice"]
            assert "other-voice" in err.message  # it lists the voices there are
            assert len(stack.tts.configs) == 2


async def test_say_is_spoken_with_marks_and_joins_the_history(make_stack) -> None:
    async with make_stack([]) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            call.say("Your order has shipped.")
            await call.wait_for(call.turn_over(1))
            audio = [a for a in call.record.of("agent_audio") if a.turn_id == 1]
            assert audio and audio[-1].mark.text_end == len("Your order has shipped.")
            final = [t for t in call.record.of("agent_text") if t.is_final]
            assert [t.full_text for t in final] == ["Your order has shipped."]
            assert stack.llm.requests == []  # said without the LLM
            call.send(agent_pb2.ConverseRequest(text="when will it arrive"))
            await call.wait_for(call.turn_over(2))
            assert assistant_history(stack) == ["Your order has shipped."]


async def test_an_interruptible_say_is_cut_and_history_keeps_what_was_heard(make_stack) -> None:
    async with make_stack(["stop please now"]) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            call.say(LONG)
            await speak_over(call, 1)
            await call.wait_for(call.turn_over(2))
            cut = call.record.events(TE.KIND_INTERRUPTED)
            assert [e.turn_id for e in cut] == [1]
            heard = cut[0].heard_text
            assert heard and LONG.startswith(heard) and len(heard) < len(LONG) - 10
            assert assistant_history(stack)[0] == heard + " —"
            # A usage report for the cut turn and for the answer (each right after its turn's last event).
            await call.wait_for(lambda r: bool(r.usage(1) and r.usage(2)))


async def test_a_non_interruptible_say_is_not_cut_by_caller_speech(make_stack) -> None:
    async with make_stack(["stop please now"]) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            call.say(LONG, interruptible=False)
            await speak_over(call, 1)
            await call.wait_for(call.turn_over(1), timeout_s=15)
            assert call.record.events(TE.KIND_INTERRUPTED) == []
            assert call.record.events(TE.KIND_AGENT_STOPPED_SPEAKING)[0].turn_id == 1
            sent_s = sum(len(a.data) for a in call.record.of("agent_audio")) / (2 * RATE)
            assert sent_s == pytest.approx(len(LONG) * 0.060, abs=0.15)  # all of it went out
            call.send(agent_pb2.ConverseRequest(text="ok"))
            await call.wait_for(call.turn_over(2))
            assert assistant_history(stack) == [LONG]
            # The client can still stop it: a control INTERRUPT cuts even a non-interruptible say.
            call.say(LONG, interruptible=False)
            await call.wait_for(lambda r: any(e.turn_id == 3 for e in r.events(TE.KIND_AGENT_STARTED_SPEAKING)))
            call.interrupt()
            await call.wait_for(call.turn_over(3))
            assert [e.turn_id for e in call.record.events(TE.KIND_INTERRUPTED)] == [3]


async def test_add_message_reaches_the_context_without_audio(make_stack) -> None:
    async with make_stack([]) as stack:
        async with AgentCall(stack.stub, session_config(system_prompt="Support persona.")) as call:
            call.add_message("system", "CRM: the caller is Ada Lovelace, premium plan.")
            call.add_message("user", "I called yesterday about my router.")
            call.add_message("assistant", "We sent a replacement.")
            await asyncio.sleep(0.3)
            assert call.record.of("agent_audio") == [] and call.record.of("notice") == []
            assert call.record.events() == []  # nothing was said or answered
            call.send(agent_pb2.ConverseRequest(text="did it ship"))
            await call.wait_for(call.turn_over(1))
            messages = stack.llm.requests[-1].messages
            assert messages[0].content == "Support persona.\n\nCRM: the caller is Ada Lovelace, premium plan."
            assert [(m.role, m.content) for m in messages[1:]] == [
                (llm_pb2.ROLE_USER, "I called yesterday about my router."),
                (llm_pb2.ROLE_ASSISTANT, "We sent a replacement."),
                (llm_pb2.ROLE_USER, "did it ship")]
            # A new persona keeps the pinned system message.
            call.update(agent_pb2.SessionConfig(system_prompt="Sales persona."), "system_prompt")
            await call.wait_for(lambda r: bool(r.of("updated")))
            call.send(agent_pb2.ConverseRequest(text="thanks"))
            await call.wait_for(call.turn_over(2))
            assert stack.llm.requests[-1].messages[0].content.startswith("Sales persona.\n\nCRM: the caller is Ada")


async def test_refused_control_messages_are_notices_and_the_call_goes_on(make_stack) -> None:
    # (what is sent, code, reason, the field the BadRequest names)
    cases = [
        (agent_pb2.UpdateSession(update_mask={"paths": ["persona"]}), grpc.StatusCode.INVALID_ARGUMENT,
         Reason.INVALID_REQUEST, "update.update_mask.paths[0]"),
        (agent_pb2.UpdateSession(update_mask={"paths": ["system_prompt", "endpointing"]}),
         grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_REQUEST, "update.update_mask.paths[1]"),
        (agent_pb2.UpdateSession(update_mask={"paths": ["input_format"]}), grpc.StatusCode.INVALID_ARGUMENT,
         Reason.INVALID_REQUEST, "update.update_mask.paths[0]"),
        (agent_pb2.UpdateSession(), grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_REQUEST, "update.update_mask"),
        (agent_pb2.UpdateSession(config=agent_pb2.SessionConfig(sampling=audio_pb2.SamplingParams(temperature=5)),
                                 update_mask={"paths": ["sampling.temperature"]}),
         grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_REQUEST, "update.config.sampling.temperature"),
        (agent_pb2.UpdateSession(config=agent_pb2.SessionConfig(profile="nobody"), update_mask={"paths": ["profile"]}),
         grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_REQUEST, "update.config.profile"),
        (agent_pb2.UpdateSession(config=agent_pb2.SessionConfig(tools=[agent_pb2.AgentTool(
            schema=audio_pb2.ToolSchema(name="bad name"), http_url="http://127.0.0.1:1/")]),
            update_mask={"paths": ["tools"]}),
         grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_REQUEST, "update.config.tools[0].schema.name"),
        (agent_pb2.UpdateContext(role="robot", text="hi"), grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_REQUEST,
         "add_message.role"),
        (agent_pb2.UpdateContext(role="system", text="x" * 101), grpc.StatusCode.INVALID_ARGUMENT,
         Reason.INPUT_TOO_LARGE, "add_message.text"),
        (agent_pb2.SayText(text="y" * 101), grpc.StatusCode.INVALID_ARGUMENT, Reason.INPUT_TOO_LARGE, "say.text"),
        (agent_pb2.SayText(text="  "), grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_REQUEST, "say.text"),
    ]
    field_of = {agent_pb2.UpdateSession: "update", agent_pb2.UpdateContext: "add_message", agent_pb2.SayText: "say"}
    async with make_stack([], max_user_text_chars=100, control_per_s=1.0, control_burst=len(cases) + 3) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            for message, *_ in cases:
                call.send(agent_pb2.ConverseRequest(**{field_of[type(message)]: message}))
            await call.wait_for(lambda r: len(r.of("notice")) == len(cases))
            for (_, code, reason, field), (notice, err) in zip(cases, call.record.notices(), strict=True):
                assert notice.stage_kind == agent_pb2.NOTICE_STAGE_CONTROL, err.message
                assert (err.code, err.reason, err.fields) == (code, reason, [field]), err.message
            assert call.record.of("updated") == [] and stack.llm.requests == []
            # A flood: the session's control bucket refuses message by message, in-stream.
            for i in range(8):
                call.add_message("user", f"note {i}")
            await call.wait_for(lambda r: any(e.reason == Reason.RATE_LIMITED for _, e in r.notices()))
            # ... and the call goes on: the accepted notes reached the context, the turn is answered.
            await asyncio.sleep(1.2)  # one token back in the bucket
            call.send(agent_pb2.ConverseRequest(text="still there?"))
            await call.wait_for(call.turn_over(1))
            flood = [(n, e) for n, e in call.record.notices() if e.reason == Reason.RATE_LIMITED]
            assert flood[0][0].stage_kind == agent_pb2.NOTICE_STAGE_CONTROL
            assert flood[0][1].code == grpc.StatusCode.RESOURCE_EXHAUSTED and flood[0][1].fields == ["add_message"]
            contents = [m.content for m in stack.llm.requests[-1].messages]
            assert contents[1:] == [f"note {i}" for i in range(8 - len(flood))] + ["still there?"]
            assert not call.done.is_set()


async def test_usage_adds_up_to_what_was_sent_and_heard(make_stack) -> None:
    async with make_stack(["what is the time"]) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            wire = AudioOut(RATE, call.spec)
            speech = wire.feed(tone(1.0)) + wire.flush()
            silence = AudioOut(RATE, call.spec).feed(np.zeros(RATE // 50, np.float32))  # 20 ms
            step = call.spec.bytes_for_ms(20)
            for start in range(0, len(speech), step):
                call.send_audio(speech[start:start + step])
                await asyncio.sleep(0.02)
            for _ in range(30):  # 0.6 s of silence: the fake endpointer needs 0.3 s
                call.send_audio(silence)
                await asyncio.sleep(0.02)
            caller_s = (len(speech) + 30 * len(silence)) / (2 * RATE)
            await call.wait_for(call.turn_over(1))
            sent_1 = sum(len(a.data) for a in call.record.of("agent_audio") if a.turn_id == 1) / (2 * RATE)
            call.send(agent_pb2.ConverseRequest(playback=agent_pb2.PlaybackMark(turn_id=1, played_ms=700)))
            call.send(agent_pb2.ConverseRequest(playback=agent_pb2.PlaybackMark(turn_id=1, played_ms=500)))  # stale
            call.say("One more thing.")
            await call.wait_for(call.turn_over(2))
            call.send(agent_pb2.ConverseRequest(playback=agent_pb2.PlaybackMark(turn_id=2, played_ms=99_999)))
            call.end()
            await asyncio.wait_for(call.done.wait(), 10)
            assert call.error is None
            rec = call.record
            assert rec.responses[-1][1].usage.final  # the last thing on the stream
            total = rec.final_usage
            sent_s = sum(len(a.data) for a in rec.of("agent_audio")) / (2 * RATE)
            assert total.caller_audio_s == pytest.approx(caller_s, abs=1e-6)
            assert total.stt_audio_s == pytest.approx(caller_s, abs=1e-6)
            assert total.agent_audio_sent_s == pytest.approx(sent_s, abs=1e-6)
            # Turn 1's highest mark, plus turn 2's capped at what was sent of it.
            assert total.agent_audio_played_s == pytest.approx(0.7 + sent_s - sent_1, abs=1e-6)
            generates = stack.llm.requests
            assert total.llm_requests == len(generates) == 1
            assert total.llm_prompt_tokens == sum(prompt_tokens(list(g.messages)) for g in generates)
            answer = rec.agent_text(1)
            assert total.llm_output_tokens == len(answer.split(" "))
            assert total.tts_characters == len(answer) + len("One more thing.")
            assert total.turns == 2 and total.tool_calls == 0 and total.duplex_s == 0
            assert total.duration_s > 0
            # The per-turn reports and the final remainder add up to the totals.
            per_turn = [u for u in rec.usage() if not u.final]
            assert [u.turn_id for u in per_turn] == [1, 2]
            for name in ("caller_audio_s", "agent_audio_sent_s", "llm_prompt_tokens", "tts_characters", "turns"):
                assert sum(getattr(u.usage, name) for u in per_turn) == pytest.approx(getattr(total, name), abs=1e-3)


async def test_an_idle_caller_is_reprompted_then_ended(make_stack) -> None:
    idle = agent_pb2.IdleConfig(timeout_ms=400, reprompt="Are you there?", max_reprompts=1, goodbye="Goodbye.")
    async with make_stack([]) as stack:
        async with AgentCall(stack.stub, session_config(idle=idle)) as call:
            await call.wait_for(lambda r: len(r.of("idle")) == 1, timeout_s=10)
            await call.wait_for(call.turn_over(1))
            call.send(agent_pb2.ConverseRequest(text="sorry, I was away"))  # the caller is back: the count resets
            await call.wait_for(call.turn_over(2))
            await asyncio.wait_for(call.done.wait(), 20)
            assert call.error is None
            rec = call.record
            assert [(i.reprompts, i.ending) for i in rec.of("idle")] == [(1, False), (1, False), (1, True)]
            finals = [t.full_text for t in rec.of("agent_text") if t.is_final]
            assert finals[0] == "Are you there?" and finals[-2:] == ["Are you there?", "Goodbye."]
            assert len(stack.llm.requests) == 1  # reprompts and goodbye are said, not generated
            assert rec.responses[-1][1].usage.final


@contextlib.asynccontextmanager
async def duplex_orchestrator():
    async with contextlib.AsyncExitStack() as stack:
        duplex = await stack.enter_async_context(start_server(duplex_runtime(FakeDuplex()), backend_settings()))
        settings = Settings(port=0, stt_backends="127.0.0.1:9", llm_backends="127.0.0.1:9",
                            tts_backends="127.0.0.1:9", duplex_backends=duplex.address)
        orch = await stack.enter_async_context(start_server(AgentRuntime(settings), settings))
        ch = await stack.enter_async_context(channel(orch.address))
        yield agent_pb2_grpc.AgentStub(ch)


async def test_duplex_refuses_what_it_cannot_honour_and_reports_usage() -> None:
    async with duplex_orchestrator() as stub:
        for field, value in (("system_prompt", "Be a pirate."), ("voice", "joe"), ("greeting", "Hi!"),
                             ("sampling", audio_pb2.SamplingParams(temperature=0.5)),
                             ("tools", [agent_pb2.AgentTool(schema=audio_pb2.ToolSchema(name="t"),
                                                            http_url="http://127.0.0.1:1/")])):
            config = session_config(mode=agent_pb2.AGENT_MODE_DUPLEX, **{field: value})
            async with AgentCall(stub, config) as call:
                await asyncio.wait_for(call.done.wait(), 10)
                err = call.error_details
                assert err is not None and err.code == grpc.StatusCode.INVALID_ARGUMENT
                assert err.reason == Reason.INVALID_CONFIG and err.fields == [f"config.{field}"], err.message
                assert "DUPLEX" in err.message
        async with AgentCall(stub, session_config(mode=agent_pb2.AGENT_MODE_DUPLEX)) as call:
            await call.wait_started()
            call.say("hello")
            call.update(agent_pb2.SessionConfig(system_prompt="x"), "system_prompt")
            call.add_message("system", "CRM data")
            await call.stream(tone(0.8), RATE)  # the call goes on: audio still relayed
            await call.wait_for(lambda r: len(r.of("agent_audio")) >= 5 and len(r.of("notice")) == 3)
            for notice, err in call.record.notices():
                assert notice.stage_kind == agent_pb2.NOTICE_STAGE_CONTROL
                assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, Reason.INVALID_REQUEST)
            assert [e.fields for _, e in call.record.notices()] == [["say"], ["update"], ["add_message"]]
            call.end()
            await asyncio.wait_for(call.done.wait(), 10)
            total = call.record.final_usage
            assert total.caller_audio_s == pytest.approx(0.8, abs=1e-6)
            assert total.duplex_s > 0 and total.llm_requests == 0
            sent = sum(len(a.data) for a in call.record.of("agent_audio")) / (2 * RATE)
            assert total.agent_audio_sent_s == pytest.approx(sent, abs=1e-6)


def test_a_duplex_profile_with_pipeline_fields_is_refused_at_load() -> None:
    with pytest.raises(ProfileError, match="system_prompt does not apply in AGENT_MODE_DUPLEX"):
        parse_profile("moshi", {"mode": "AGENT_MODE_DUPLEX", "systemPrompt": "Be a pirate."})
    assert parse_profile("moshi", {"mode": "AGENT_MODE_DUPLEX"}).config.mode == agent_pb2.AGENT_MODE_DUPLEX


async def test_voxgrid_talk_scripts_live_control(make_stack) -> None:
    script = Script(messages=[parse_message("system:CRM: a premium caller.")],
                    updates=[parse_update("system_prompt=Pirate persona."), parse_update("sampling.temperature=0.2")],
                    says=["Hold on."])
    async with make_stack(["hello there", "hello again"], llm=FakeLlm(reply=persona_reply)) as stack:
        record, _ = await talk(stack.orchestrator.address, tone(0.8), RATE, system_prompt="Clerk persona.",
                               script=script, timeout_s=20)
    assert record.agent_text(1).startswith("Clerk answers hello there")
    assert [t.full_text for t in record.of("agent_text") if t.is_final and t.turn_id == 2] == ["Hold on."]
    assert record.agent_text(3).startswith("Pirate answers hello again")
    assert stack.llm.requests[-1].messages[0].content == "Pirate persona.\n\nCRM: a premium caller."
    assert stack.llm.requests[-1].sampling.temperature == pytest.approx(0.2)
    s = summary(record)
    assert [u["paths"] for u in s["updates"]] == [["system_prompt"], ["sampling.temperature"]]
    assert s["usage"]["turns"] == 3 and s["usage"]["caller_audio_s"] > 1.6
