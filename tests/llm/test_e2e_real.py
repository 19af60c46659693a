"""The packaged Qwen2.5-Coder 0.5B instruct model over loopback gRPC: real answers, real tool calls."""

from __future__ import annotations

import json

import pytest
from voxgrid.services.llm.app import LlmRuntime
from voxgrid.services.llm.client import ChatStream, system, user

from voxgrid.client import channel
from voxgrid.server.chassis import ServiceServer
from voxgrid.v1 import audio_pb2, llm_pb2

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

GREEDY = audio_pb2.SamplingParams(temperature=0.0, max_tokens=40)
WEATHER = audio_pb2.ToolSchema(
    name="get_weather",
    description="Get the current weather for a city",
    parameters_json=json.dumps(
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    ),
)


async def test_capital_of_france_is_paris(real_server: tuple[ServiceServer, LlmRuntime]) -> None:
    async with channel(real_server[0].address) as ch, ChatStream(ch) as chat:
        result = await chat.generate("q", [user("What is the capital of France?")], GREEDY)
    assert "Paris" in result.text
    assert result.done is not None and result.done.finish_reason == llm_pb2.FINISH_REASON_STOP
    assert result.done.time_to_first_token_ms > 0


async def test_weather_question_with_a_tool_becomes_a_tool_call(real_server: tuple[ServiceServer, LlmRuntime]) -> None:
    async with channel(real_server[0].address) as ch, ChatStream(ch) as chat:
        result = await chat.generate(
            "t", [user("What's the weather in Paris right now?")], GREEDY, tools=[WEATHER]
        )
    assert result.done is not None and result.done.finish_reason == llm_pb2.FINISH_REASON_TOOL_CALLS
    (call,) = result.tool_calls
    assert call.name == "get_weather" and json.loads(call.arguments_json)["city"].lower().startswith("paris")
    assert "get_weather" not in result.text and "{" not in result.text  # no tool-call markup leaks as text


async def test_prewarmed_turn_serves_its_prefix_from_cache(real_server: tuple[ServiceServer, LlmRuntime]) -> None:
    persona = system("You are a concise assistant for a restaurant. Opening hours: 12-15 and 18-23 daily.")
    async with channel(real_server[0].address) as ch, ChatStream(ch, session_id="real-prewarm") as chat:
        warmed = await chat.prewarm([persona, user("When are you")])
        result = await chat.generate("w", [persona, user("When are you open tonight?")], GREEDY)
    assert warmed is not None and warmed.WhichOneof("event") == "prewarmed"
    assert result.done is not None and result.done.cached_prompt_tokens >= warmed.prewarmed.prompt_tokens - 8
    assert "18" in result.text or "6" in result.text
