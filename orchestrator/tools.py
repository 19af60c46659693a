"""Tools the agent may call mid-conversation, and how each one runs.

A tool is declared in the session config (name, description, JSON schema for the model) with its
backend: an HTTP endpoint (POST the arguments as JSON, the body is the result) or a knowledge
collection of this orchestrator. Failures and time-outs become a result the model can speak about
("the lookup failed"), never a broken session.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass

from voxgrid.orchestrator.knowledge import KnowledgeBase
from voxgrid.orchestrator.limits import bound_tool_result

from voxgrid.errors import ConfigError
from voxgrid.v1 import agent_pb2, audio_pb2

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# What AgentTool.timeout_ms / filler_after_ms = 0 mean (SessionStarted reports them).
DEFAULT_TOOL_TIMEOUT_MS = 5000
DEFAULT_FILLER_AFTER_MS = 700


@dataclass
class ToolResult:
    text: str
    ok: bool
    seconds: float
    timed_out: bool = False  # the tool did not answer within its timeout_ms


class ToolRunner:
    def __init__(self, tools: list[agent_pb2.AgentTool], knowledge: dict[str, KnowledgeBase],
                 max_result_chars: int) -> None:
        self.tools = {t.schema.name: t for t in tools}
        self.knowledge = knowledge
        self.max_result_chars = max_result_chars

    @staticmethod
    def validate(tools: list[agent_pb2.AgentTool], knowledge: dict[str, KnowledgeBase]) -> None:
        """Raise ValueError naming the tool and what to fix; runs before any work of the session."""
        seen = set()
        for i, tool in enumerate(tools):
            name = tool.schema.name
            where = f"tools[{i}] ({name or 'unnamed'})"
            if not NAME.match(name):
                raise ConfigError(f"tools[{i}].schema.name", f"{where}: name must match [a-zA-Z0-9_-]{{1,64}}")
            if name in seen:
                raise ConfigError(f"tools[{i}].schema.name", f"{where}: duplicate tool name")
            seen.add(name)
            if tool.schema.parameters_json:
                try:
                    schema = json.loads(tool.schema.parameters_json)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"tools[{i}].schema.parameters_json",
                                      f"{where}: parameters_json is not valid JSON ({exc})") from exc
                if not isinstance(schema, dict) or schema.get("type", "object") != "object":
                    raise ConfigError(f"tools[{i}].schema.parameters_json",
                                      f"{where}: parameters_json must be a JSON Schema of type object")
            backend = tool.WhichOneof("backend")
            if backend is None:
                raise ConfigError(f"tools[{i}]", f"{where}: set a backend (http_url or knowledge_collection)")
            if backend == "http_url" and not tool.http_url.startswith(("http://", "https://")):
                raise ConfigError(f"tools[{i}].http_url", f"{where}: http_url must start with http:// or https://")
            if backend == "knowledge_collection" and tool.knowledge_collection not in knowledge:
                known = ", ".join(sorted(knowledge)) or "none (set knowledge_dir on the orchestrator)"
                raise ConfigError(f"tools[{i}].knowledge_collection",
                                  f"{where}: unknown knowledge collection {tool.knowledge_collection!r}; "
                                  f"available: {known}")

    def schemas(self) -> list[audio_pb2.ToolSchema]:
        out = []
        for tool in self.tools.values():
            schema = audio_pb2.ToolSchema()
            schema.CopyFrom(tool.schema)
            if not schema.parameters_json and tool.WhichOneof("backend") == "knowledge_collection":
                schema.parameters_json = json.dumps({"type": "object", "properties": {
                    "query": {"type": "string", "description": "what to look up"}}, "required": ["query"]})
            out.append(schema)
        return out

    def timeout_s(self, name: str) -> float:
        tool = self.tools.get(name)
        return (tool.timeout_ms if tool and tool.timeout_ms else DEFAULT_TOOL_TIMEOUT_MS) / 1000

    def filler(self, name: str) -> tuple[str, float]:
        tool = self.tools.get(name)
        if tool is None or not tool.filler:
            return "", 0.0
        return tool.filler, (tool.filler_after_ms or DEFAULT_FILLER_AFTER_MS) / 1000

    async def run(self, call: audio_pb2.ToolCall) -> ToolResult:
        start = time.monotonic()
        tool = self.tools.get(call.name)
        if tool is None:
            return ToolResult(f"error: there is no tool named {call.name}", False, 0.0)
        try:
            args = json.loads(call.arguments_json or "{}")
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
        except (json.JSONDecodeError, ValueError) as exc:
            return ToolResult(f"error: the arguments were not valid JSON ({exc})", False, 0.0)
        try:
            async with asyncio.timeout(self.timeout_s(call.name)):
                if tool.WhichOneof("backend") == "knowledge_collection":
                    text = self._lookup(tool.knowledge_collection, str(args.get("query", "")))
                else:
                    text = await self._http(tool.http_url, args)
            return ToolResult(bound_tool_result(text, self.max_result_chars), True, time.monotonic() - start)
        except TimeoutError:
            return ToolResult(f"error: {call.name} did not answer in time", False, time.monotonic() - start, True)
        except Exception as exc:
            return ToolResult(f"error: {call.name} failed ({type(exc).__name__}: {exc})", False,
                              time.monotonic() - start)

    def _lookup(self, collection: str, query: str) -> str:
        hits = self.knowledge[collection].search(query)
        if not hits:
            return "no matching passage found"
        return "\n".join(f"[{h.source}] {h.text}" for h in hits)

    @staticmethod
    async def _http(url: str, args: dict[str, object]) -> str:
        import aiohttp

        async with aiohttp.ClientSession() as http, http.post(url, json=args) as resp:
            body = await resp.text()
            if resp.status >= 400:
                raise RuntimeError(f"HTTP {resp.status}: {body[:200]}")
            return body
