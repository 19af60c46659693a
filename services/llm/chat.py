"""Chat template rendering and streamed tool-call parsing, shared by every LLM engine.

Prompts are rendered with the model's own chat template (Qwen's puts tool schemas in the system turn
and asks for ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``). Small models do not always
obey: the packaged Qwen2.5-Coder 0.5B answers a tool request with a fenced ```json block instead. The
parser accepts both forms, so callers get `ToolCall`s either way, and it never streams tool-call markup
as text: anything that may still turn into a tool call is held back until it is decided.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from voxgrid.services.llm.engines.base import Message, ToolCall, ToolSpec

TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"
_FENCE_RE = re.compile(r"^\s*```(?:json)?\s*(\{.*\})\s*```\s*$", re.DOTALL)


class ChatTokenizer(Protocol):
    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


def message_dict(message: Message) -> dict[str, Any]:
    """One message in the shape Hugging Face chat templates expect.

    A message with audio has list content, one ``{"type": "audio"}`` item per audio window and then its
    text: the multimodal shape speech-in chat templates (Qwen2-Audio, Qwen2.5-Omni, ...) turn into the
    model's own placeholder layout.
    """
    content: Any = message.content
    if message.audio:
        content = [{"type": "audio"} for _ in message.audio]
        if message.content:
            content.append({"type": "text", "text": message.content})
    entry: dict[str, Any] = {"role": message.role, "content": content}
    if message.tool_calls:
        entry["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _json_or_text(call.arguments_json)},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id:
        entry["tool_call_id"] = message.tool_call_id
    return entry


def tool_dict(tool: ToolSpec) -> dict[str, Any]:
    parameters = tool.parameters or {"type": "object", "properties": {}}
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": parameters},
    }


def render_prompt(
    tokenizer: ChatTokenizer,
    messages: tuple[Message, ...] | list[Message],
    tools: tuple[ToolSpec, ...] | list[ToolSpec] = (),
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for a generation (or, with ``add_generation_prompt=False``, for a prewarm prefix)."""
    return tokenizer.apply_chat_template(
        [message_dict(m) for m in messages],
        tools=[tool_dict(t) for t in tools] or None,
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
    )


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return text


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:16]}"


def parse_tool_call(body: str, tool_names: frozenset[str] | None = None) -> ToolCall | None:
    """A ToolCall from ``{"name": ..., "arguments": {...}}`` text, or None when it is not one.

    With ``tool_names``, a call to a tool the request did not offer is not a tool call (it stays text).
    """
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    if tool_names is not None and data["name"] not in tool_names:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):
        arguments = _json_or_text(arguments)
    if not isinstance(arguments, dict):
        return None
    return ToolCall(id=new_call_id(), name=data["name"], arguments_json=json.dumps(arguments))


def _partial_suffix_len(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


@dataclass
class ParsedChunk:
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


class ToolCallParser:
    """Splits streamed model text into plain text and tool calls.

    Recognised: ``<tool_call>JSON</tool_call>`` anywhere, and (only when tools were offered) a reply
    that *starts* with a bare or fenced JSON object naming an offered tool. Without tools the parser
    passes text straight through, apart from ``<tool_call>`` markup, which is never shown.
    """

    def __init__(self, tools: tuple[ToolSpec, ...] | list[ToolSpec] = ()) -> None:
        self._tool_names = frozenset(t.name for t in tools) if tools else None
        self._buffer = ""
        self._in_tag = False
        # While True, the reply so far is whitespace or a JSON-looking start that may be a tool call.
        self._leading = self._tool_names is not None
        self.calls: list[ToolCall] = []
        self.malformed = 0  # leading tool calls that could not be parsed (dropped, not spoken)

    def feed(self, text: str) -> ParsedChunk:
        """Add newly generated text; returns what can be emitted now."""
        self._buffer += text
        out = ParsedChunk()
        if self._leading:
            if not self._resolve_leading(out, final=False):
                return out
        self._drain_tags(out)
        return out

    def finish(self) -> ParsedChunk:
        """End of generation: decide what is still held back."""
        out = ParsedChunk()
        if self._leading:
            self._resolve_leading(out, final=True)
        if self._in_tag:
            call = parse_tool_call(self._buffer.strip(), None)
            if call is not None:
                self._emit_call(out, call)
            else:
                out.text += TOOL_OPEN + self._buffer
            self._buffer = ""
            self._in_tag = False
        out.text += self._buffer
        self._buffer = ""
        return out

    def _emit_call(self, out: ParsedChunk, call: ToolCall) -> None:
        out.tool_calls.append(call)
        self.calls.append(call)

    def _resolve_leading(self, out: ParsedChunk, final: bool) -> bool:
        """Handle a reply that may open with a bare/fenced JSON call. True once normal parsing resumes."""
        stripped = self._buffer.lstrip()
        if not stripped:
            return final
        if TOOL_OPEN.startswith(stripped[: len(TOOL_OPEN)]) or not (
            stripped.startswith("{") or "```".startswith(stripped[:3])
        ):
            self._leading = False
            return True
        candidate = _FENCE_RE.match(stripped)
        body = candidate.group(1) if candidate else stripped
        call = parse_tool_call(body, self._tool_names)
        if call is not None:
            self._emit_call(out, call)
            self._buffer = ""
            # After a leading call, more calls may follow (one JSON object or fence each).
            return False
        if final or not self._may_still_be_call(stripped):
            if stripped.startswith(("{", "```")) and any(f'"{name}"' in stripped for name in self._tool_names or ()):
                # A malformed call of an offered tool: never text to be spoken. Drop it.
                self.malformed += 1
                self._buffer = ""
                self._leading = False
                return True
            self._leading = False
            return True
        return False

    @staticmethod
    def _may_still_be_call(stripped: str) -> bool:
        if stripped.startswith("```"):
            first_line, newline, _ = stripped[3:].partition("\n")
            if newline and first_line.strip() not in ("", "json"):
                return False  # a code block in another language: plain text
            return stripped.count("```") < 2
        return _json_incomplete(stripped)

    def _drain_tags(self, out: ParsedChunk) -> None:
        while True:
            if self._in_tag:
                end = self._buffer.find(TOOL_CLOSE)
                if end < 0:
                    return
                body, self._buffer = self._buffer[:end], self._buffer[end + len(TOOL_CLOSE) :]
                self._in_tag = False
                call = parse_tool_call(body.strip(), None)
                if call is not None:
                    self._emit_call(out, call)
                else:
                    out.text += TOOL_OPEN + body + TOOL_CLOSE
                continue
            start = self._buffer.find(TOOL_OPEN)
            if start >= 0:
                out.text += self._buffer[:start]
                self._buffer = self._buffer[start + len(TOOL_OPEN) :]
                self._in_tag = True
                continue
            hold = _partial_suffix_len(self._buffer, TOOL_OPEN)
            out.text += self._buffer[: len(self._buffer) - hold]
            self._buffer = self._buffer[len(self._buffer) - hold :]
            return


def _json_incomplete(text: str) -> bool:
    """True while ``text`` (starting with '{') has unclosed braces outside strings."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return False
    return True
