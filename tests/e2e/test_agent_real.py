"""The agent end to end with the real services and small real models over loopback gRPC.

STT is faster-whisper tiny.en, the LLM is the packaged Qwen2.5 0.5B instruct in bf16 on CPU, TTS is Piper;
the caller's speech is made with flite and streamed in real time.
"""

from __future__ import annotations

import json

import pytest
import pytest_asyncio
import soxr
from voxgrid.orchestrator.client import TE, AgentCall, session_config

from tests.conftest import synthesize_speech
from tests.real_stack import real_agent_stack
from voxgrid.client import channel
from voxgrid.v1 import agent_pb2, agent_pb2_grpc, audio_pb2, stt_pb2

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
RATE = 16000


def speech(text: str, speech_dir) -> object:
    x, rate = synthesize_speech(text, speech_dir / (text[:40].replace(" ", "_").replace("?", "") + ".wav"))
    return soxr.resample(x, rate, RATE).astype("float32")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def real_stack():
    async with real_agent_stack(max_tokens=40) as (orch, backends), channel(orch.address) as ch:
        yield agent_pb2_grpc.AgentStub(ch), backends


async def ask(call: AgentCall, x, nth: int) -> None:
    """Say `x` and wait for the call's `nth` agent turn to end (turn ids may skip: voided speculative answers)."""
    await call.stream(x, RATE)
    await call.silence(90, until=lambda: call.nth_turn_over(nth)(call.record) or call.done.is_set())
    assert call.error is None, call.error


@pytest.mark.asyncio(loop_scope="module")
async def test_a_two_turn_spoken_conversation(real_stack, speech_dir) -> None:
    stub, _ = real_stack
    async with AgentCall(stub, session_config()) as call:
        await ask(call, speech("What is the capital of France?", speech_dir), 1)
        await ask(call, speech("And what is the capital of Germany?", speech_dir), 2)
        finals = [f.lower() for f in call.record.finals()]
        assert "capital of france" in finals[0] and "germany" in finals[1]
        first, second = call.record.agent_turns()
        assert "paris" in call.record.agent_text(first).lower()
        assert "berlin" in call.record.agent_text(second).lower()
        lats = call.record.of("latency")
        assert [x.turn_id for x in lats] == [first, second] and all(x.voice_to_voice_ms > 0 for x in lats)
        assert len(call.record.agent_audio(call.out_spec)) > RATE  # more than a second of speech came back


@pytest.mark.asyncio(loop_scope="module")
async def test_barge_in_with_real_models(real_stack, speech_dir) -> None:
    stub, _ = real_stack
    config = session_config(sampling=audio_pb2.SamplingParams(max_tokens=200),
                            system_prompt="You are a storyteller. Always answer with a long story.")
    async with AgentCall(stub, config) as call:
        await call.stream(speech("Tell me a long story about a dragon.", speech_dir), RATE)
        await call.silence(60, until=lambda: bool(call.record.events(TE.KIND_AGENT_STARTED_SPEAKING)))
        await call.silence(1.5)
        await call.stream(speech("Stop. What is the capital of Italy?", speech_dir), RATE)
        await call.silence(90, until=lambda: call.nth_turn_over(2)(call.record) or call.done.is_set())
        story, answer = call.record.agent_turns()
        interrupted = call.record.events(TE.KIND_INTERRUPTED)
        assert interrupted and interrupted[0].turn_id == story
        heard = interrupted[0].heard_text
        full = call.record.agent_text(story)
        assert full.startswith(heard) and len(heard) < len(full)
        assert "italy" in call.record.finals()[-1].lower()
        assert call.record.agent_text(answer)


@pytest_asyncio.fixture(loop_scope="module")
async def weather_service():
    """A real HTTP tool backend on loopback."""
    from aiohttp import web

    calls: list[dict] = []

    async def weather(request: web.Request) -> web.Response:
        calls.append(await request.json())
        return web.Response(text="It is 18 degrees Celsius and sunny.")

    app = web.Application()
    app.router.add_post("/weather", weather)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/weather", calls
    await runner.cleanup()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_tool_call_round_trip_with_the_real_model(real_stack, speech_dir, weather_service) -> None:
    stub, _ = real_stack
    url, calls = weather_service
    tool = agent_pb2.AgentTool(
        schema=audio_pb2.ToolSchema(name="get_weather", description="Get the current weather for a city.",
                                    parameters_json=json.dumps({"type": "object", "properties": {
                                        "city": {"type": "string"}}, "required": ["city"]})),
        http_url=url, timeout_ms=2000)
    greedy = audio_pb2.SamplingParams(temperature=0.0)
    async with AgentCall(stub, session_config(tools=[tool], sampling=greedy)) as call:
        await ask(call, speech("What is the weather in Paris right now?", speech_dir), 1)
        started = call.record.events(TE.KIND_TOOL_CALL_STARTED)
        assert started and {e.tool_name for e in started} == {"get_weather"}
        assert calls and "paris" in json.dumps(calls[0]).lower()
        answer = call.record.agent_text(call.record.agent_turns()[0]).lower()
        assert "get_weather" not in answer  # no tool-call markup is ever spoken
        assert "18" in answer or "sunny" in answer or "eighteen" in answer
        assert call.record.events(TE.KIND_AGENT_STOPPED_SPEAKING)


@pytest.mark.asyncio(loop_scope="module")
async def test_live_control_and_usage_with_real_models(real_stack, speech_dir) -> None:
    """A spoken turn, a `say` and an `update` on the real stack; the usage record adds up to what was sent."""
    stub, _ = real_stack
    x = speech("What is the capital of France?", speech_dir)
    # No fast preview: a speculative answer voided at a pause would be one more LLM request in the usage, and
    # this test counts them exactly.
    config = session_config(endpointing=stt_pb2.EndpointingConfig(fast_preview=False))
    async with AgentCall(stub, config) as call:
        await ask(call, x, 1)
        call.update(agent_pb2.SessionConfig(system_prompt="You are a pirate. One short sentence."), "system_prompt")
        call.say("Please hold the line.")
        await call.silence(60, until=lambda: call.turn_over(2)(call.record) or call.done.is_set())
        call.end()
        await call.done.wait()
        assert call.error is None, call.error
        rec = call.record
        assert [list(u.paths) for u in rec.of("updated")] == [["system_prompt"]]
        assert rec.of("updated")[0].config.system_prompt.startswith("You are a pirate.")
        said = [a for a in rec.of("agent_audio") if a.turn_id == 2]
        assert said and said[-1].mark.text_end == len("Please hold the line.")
        total = rec.final_usage
        assert rec.responses[-1][1].usage.final
        # Every byte the call sent was caller audio (PCM16 at 16 kHz); none was lost on the way to STT.
        sent_s = call.audio_bytes_sent / (2 * RATE)
        assert total.caller_audio_s == pytest.approx(sent_s, abs=1e-5) and total.stt_audio_s == total.caller_audio_s
        assert total.agent_audio_sent_s == pytest.approx(
            sum(len(a.data) for a in rec.of("agent_audio")) / (2 * RATE), abs=1e-5)
        assert total.llm_requests == 1 and total.llm_output_tokens > 0
        assert 0 <= total.llm_cached_prompt_tokens <= total.llm_prompt_tokens and total.llm_prompt_tokens > 20
        answer = next(t.full_text for t in rec.of("agent_text") if t.is_final and t.turn_id == 1)
        assert total.tts_characters == len(answer) + len("Please hold the line.")
        assert total.turns == 2
