"""The Agent gRPC edge: validate a session's config before any work, pick the mode, run the session."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from voxgrid.orchestrator.duplex_relay import DuplexRelay
from voxgrid.orchestrator.limits import InputLimits
from voxgrid.orchestrator.routing import BackendError
from voxgrid.orchestrator.session import PipelineSession
from voxgrid.orchestrator.tools import ToolRunner

from voxgrid.audio import AudioSpec
from voxgrid.server.streams import Outbox, abort, bind_session, pump, read_config
from voxgrid.v1 import agent_pb2, agent_pb2_grpc, audio_pb2

if TYPE_CHECKING:
    from voxgrid.orchestrator.app import AgentRuntime


def validate_config(config: agent_pb2.SessionConfig, runtime: AgentRuntime) -> None:
    """Everything that can be checked without a backend; ValueError says what to change."""
    AudioSpec.from_proto(config.input_format, what="input_format")
    if config.HasField("output_format"):
        AudioSpec.from_proto(config.output_format, what="output_format")
    if config.mode not in agent_pb2.AgentMode.values():
        raise ValueError(f"mode {config.mode} is unknown: use AGENT_MODE_PIPELINE, AGENT_MODE_DUPLEX or "
                         "AGENT_MODE_HYBRID")
    if config.profile:
        raise ValueError(f"profile {config.profile!r} is unknown: this orchestrator has no agent profiles configured")
    if config.edge_audio.noise_suppression or config.edge_audio.echo_cancellation:
        raise ValueError("edge_audio noise suppression and echo cancellation are not available on this "
                         "orchestrator yet: leave them off")
    s = config.sampling
    if s.HasField("temperature") and not 0 <= s.temperature <= 2:
        raise ValueError(f"sampling.temperature {s.temperature} is out of range [0, 2]")
    if s.HasField("top_p") and not 0 < s.top_p <= 1:
        raise ValueError(f"sampling.top_p {s.top_p} is out of range (0, 1]")
    if s.HasField("max_tokens") and not 1 <= s.max_tokens <= 8192:
        raise ValueError(f"sampling.max_tokens {s.max_tokens} is out of range [1, 8192]")
    ToolRunner.validate(list(config.tools), runtime.knowledge)


class AgentServicer(agent_pb2_grpc.AgentServicer):
    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime
        self._voices: tuple[float, set[str]] = (0.0, set())

    async def voices(self) -> set[str]:
        """Voices the TTS replicas offer (cached for a minute)."""
        at, names = self._voices
        if time.monotonic() - at > 60 or not names:
            resp = await self.runtime.backends.tts.unary("ListVoices", audio_pb2.ListModelsRequest())
            names = {m.name for m in resp.models}
            self._voices = (time.monotonic(), names)
        return names

    async def Converse(
        self, request_iterator: AsyncIterator[agent_pb2.ConverseRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.ConverseResponse]:
        config: agent_pb2.SessionConfig = await read_config(request_iterator, context)
        session_id = config.session_id or uuid.uuid4().hex[:12]
        bind_session(session_id)
        try:
            validate_config(config, self.runtime)
        except ValueError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        out: Outbox[agent_pb2.ConverseResponse] = Outbox()
        session: Any
        mode = config.mode or agent_pb2.AGENT_MODE_PIPELINE
        try:
            if mode == agent_pb2.AGENT_MODE_HYBRID:
                await abort(context, grpc.StatusCode.UNIMPLEMENTED,
                            "hybrid mode is not available on this orchestrator yet: use AGENT_MODE_PIPELINE")
            if mode == agent_pb2.AGENT_MODE_DUPLEX:
                if self.runtime.backends_duplex is None:
                    await abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                                "duplex mode is not configured on this orchestrator (set duplex_backends)")
                session = DuplexRelay(config, session_id, self.runtime.backends_duplex, out)
            else:
                if config.voice:
                    voices = await self.voices()
                    if config.voice not in voices:
                        await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                                    f"voice {config.voice!r} is unknown; available: {', '.join(sorted(voices))}")
                s = self.runtime.settings
                session = PipelineSession(
                    config, session_id, self.runtime.backends,
                    ToolRunner(list(config.tools), self.runtime.knowledge, s.max_tool_result_chars),
                    out, system_prompt=s.default_system_prompt, max_history_tokens=s.max_history_tokens,
                    max_tokens=s.max_tokens, playout_lead_ms=s.playout_lead_ms,
                    reconnect_attempts=s.reconnect_attempts, limits=InputLimits.from_settings(s),
                    tts_first_chunk_chars=s.tts_first_chunk_chars,
                    speculative_turns=s.speculative_turns)
            await session.open()
        except BackendError as err:
            code = err.code if err.code != grpc.StatusCode.RESOURCE_EXHAUSTED else grpc.StatusCode.UNAVAILABLE
            await abort(context, code, f"{err.stage} stage: {err.message}")

        async def on_request(request: agent_pb2.ConverseRequest) -> None:
            session.post("client", request)

        async def on_end() -> None:
            session.post("client_end")

        runner = asyncio.create_task(session.run())
        try:
            async for response in pump(request_iterator, on_request, out, context, on_end):
                yield response
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner
            await session.close()


def tool_schema(name: str, description: str, properties: dict[str, Any], required: list[str]) -> audio_pb2.ToolSchema:
    """Convenience for clients and tests building tool declarations."""
    return audio_pb2.ToolSchema(name=name, description=description, parameters_json=json.dumps(
        {"type": "object", "properties": properties, "required": required}))
