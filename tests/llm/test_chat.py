"""Chat template rendering and streamed tool-call parsing (shared by both engines)."""

from __future__ import annotations

import json
from typing import Any

from voxgrid.services.llm.chat import ToolCallParser, parse_tool_call, render_prompt
from voxgrid.services.llm.engines.base import Message, ToolCall, ToolSpec

WEATHER = ToolSpec("get_weather", "Current weather in a city",
                   {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


def run(parser: ToolCallParser, pieces: list[str]) -> tuple[str, list[ToolCall]]:
    text, calls = "", []
    for piece in pieces:
        out = parser.feed(piece)
        text += out.text
        calls += out.tool_calls
    out = parser.finish()
    return text + out.text, calls + out.tool_calls


def chars(text: str) -> list[str]:
    return list(text)  # worst case streaming: one character per delta


def test_tagged_tool_call_split_over_many_deltas_is_not_streamed_as_text() -> None:
    reply = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    text, calls = run(ToolCallParser([WEATHER]), chars(reply))
    assert text == "Let me check.\n"
    assert [(c.name, json.loads(c.arguments_json)) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert calls[0].id.startswith("call_")


def test_tagged_calls_are_parsed_even_without_tools_offered_and_two_calls_get_two_ids() -> None:
    one = '<tool_call>{"name": "a", "arguments": {}}</tool_call>'
    text, calls = run(ToolCallParser(), chars(one + one))
    assert text == "" and [c.name for c in calls] == ["a", "a"] and calls[0].id != calls[1].id


def test_fenced_json_reply_naming_an_offered_tool_is_a_call() -> None:
    # What the packaged Qwen2.5-Coder 0.5B actually answers to a weather question with tools offered.
    reply = '```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Paris"\n  }\n}\n```'
    text, calls = run(ToolCallParser([WEATHER]), chars(reply))
    assert text == "" and len(calls) == 1 and json.loads(calls[0].arguments_json) == {"city": "Paris"}


def test_json_naming_an_unknown_tool_stays_text() -> None:
    reply = '{"name": "launch_rocket", "arguments": {}}'
    text, calls = run(ToolCallParser([WEATHER]), chars(reply))
    assert text == reply and calls == []


def test_without_tools_plain_text_and_json_pass_through_unchanged() -> None:
    reply = '{"name": "get_weather"} is JSON; 3 < 4 and <b>bold</b> stay.'
    text, calls = run(ToolCallParser(), chars(reply))
    assert text == reply and calls == []


def test_text_that_only_starts_like_a_tag_is_released() -> None:
    text, calls = run(ToolCallParser([WEATHER]), ["Use <tool", "s wisely"])
    assert text == "Use <tools wisely" and calls == []


def test_plain_answer_with_tools_offered_streams_without_waiting_for_the_end() -> None:
    parser = ToolCallParser([WEATHER])
    assert parser.feed("The capital").text == "The capital"


def test_code_block_in_another_language_is_text() -> None:
    reply = "```python\nprint(1)\n```"
    text, calls = run(ToolCallParser([WEATHER]), chars(reply))
    assert text == reply and calls == []


def test_unclosed_tag_with_valid_json_at_end_of_generation_is_still_a_call() -> None:
    text, calls = run(ToolCallParser([WEATHER]), ['<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}'])
    assert text == "" and calls[0].name == "get_weather"


def test_parse_tool_call_accepts_string_arguments_and_rejects_non_objects() -> None:
    call = parse_tool_call('{"name": "f", "arguments": "{\\"x\\": 1}"}')
    assert call is not None and json.loads(call.arguments_json) == {"x": 1}
    assert parse_tool_call('{"name": "f", "arguments": [1]}') is None
    assert parse_tool_call("[1, 2]") is None


def test_render_prompt_uses_the_model_template_with_tools_and_tool_results(tiny_tokenizer: Any) -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    messages = (
        Message("system", "Be brief."),
        Message("user", "Weather in Paris?"),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", '{"temp_c": 21}', tool_call_id="call_1"),
    )
    prompt = render_prompt(tiny_tokenizer, messages, [WEATHER])
    assert "Be brief." in prompt and '"name": "get_weather"' in prompt and "<tools>" in prompt
    assert '{"temp_c": 21}' in prompt and prompt.endswith("<|im_start|>assistant\n")
    prefix = render_prompt(tiny_tokenizer, messages[:2], [WEATHER], add_generation_prompt=False)
    assert prompt.startswith(prefix[: prefix.rindex("<|im_end|>")])
