"""The Agent gRPC edge: validate a session's config before any work, pick the mode, run the session."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from voxgrid.orchestrator.catalog import BackendCatalog
from voxgrid.orchestrator.duplex_relay import DuplexRelay
from voxgrid.orchestrator.effective import session_started
from voxgrid.orchestrator.hybrid import HybridSpec
from voxgrid.orchestrator.limits import InputLimits
from voxgrid.orchestrator.modes import check_mode_fields
from voxgrid.orchestrator.profiles import ProfileError, check_values
from voxgrid.orchestrator.routing import BackendError
from voxgrid.orchestrator.session import PipelineSession
from voxgrid.orchestrator.tools import ToolRunner

from voxgrid.audio import AudioSpec
from voxgrid.audio_edge import check_edge_config
from voxgrid.errors import Reason, config_field
from voxgrid.server.streams import Outbox, abort, bind_session, pump, read_config
from voxgrid.v1 import agent_pb2, agent_pb2_grpc, audio_pb2

if TYPE_CHECKING:
    from voxgrid.orchestrator.app import AgentRuntime


def validate_config(config: agent_pb2.SessionConfig, runtime: AgentRuntime) -> None:
    """Everything that can be checked without a backend; ValueError says what to change."""
    AudioSpec.from_proto(config.input_format, what="input_format", allow_opus=True)
    if config.HasField("output_format"):
        AudioSpec.from_proto(config.output_format, what="output_format", allow_opus=True)
    check_values(config)
    check_edge_config(config.edge_audio)
    if config.edge_audio.echo_cancellation and config.mode == agent_pb2.AGENT_MODE_DUPLEX:
        raise ValueError("edge_audio.echo_cancellation is not available in duplex mode (the duplex model hears "
                         "its own voice by design): leave it off, or use AGENT_MODE_PIPELINE")
    ToolRunner.validate(list(config.tools), runtime.knowledge)


async def config_abort(context: grpc.aio.ServicerContext, exc: ValueError) -> NoReturn:
    """INVALID_ARGUMENT for a bad session config, with a BadRequest violation naming the field."""
    field = config_field(exc, agent_pb2.SessionConfig.DESCRIPTOR)
    await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), reason=Reason.INVALID_CONFIG,
                field=f"config.{field}" if field else "config")


class AgentServicer(agent_pb2_grpc.AgentServicer):
    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime
        self.catalog = BackendCatalog(runtime.backends.tts, runtime.backends.llm)

    async def ListProfiles(
        self, request: agent_pb2.ListProfilesRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ListProfilesResponse:
        store = self.runtime.profiles
        await store.refresh()
        return agent_pb2.ListProfilesResponse(profiles=[p.summary() for p in store.profiles()],
                                              default_profile=store.default)

    async def _hybrid_spec(self, context: grpc.aio.ServicerContext) -> HybridSpec:
        """Hybrid mode needs an LLM that hears: FAILED_PRECONDITION naming the model at the start, never mid-call."""
        model, speech_input = await self.catalog.speech_input()
        if speech_input is None:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                        f"hybrid mode needs a speech-in LLM, but model {model!r} on the llm replicas cannot hear "
                        "(ListModels: accepts_audio false): serve a speech-in model (Qwen2-Audio, Voxtral, ...; see "
                        "docs/hybrid.md) or use AGENT_MODE_PIPELINE", reason=Reason.NOT_CONFIGURED, field="config.mode")
        limit_ms = self.runtime.settings.max_utterance_audio_s * 1000
        return HybridSpec(model, speech_input, min(limit_ms, speech_input.max_audio_ms or limit_ms))

    async def Converse(
        self, request_iterator: AsyncIterator[agent_pb2.ConverseRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.ConverseResponse]:
        config: agent_pb2.SessionConfig = await read_config(request_iterator, context)
        session_id = config.session_id or uuid.uuid4().hex[:12]
        bind_session(session_id)
        try:
            client_config = config
            config = await self.runtime.profiles.resolve(config)  # the profile, with this session's fields over it
            validate_config(config, self.runtime)
            check_mode_fields(config, client_config)  # e.g. a system prompt for DUPLEX: refused, not dropped
        except (ProfileError, ValueError) as exc:
            await config_abort(context, exc)
        out: Outbox[agent_pb2.ConverseResponse] = Outbox()
        # First in the outbox, so first on the wire; dropped with the outbox if the session cannot start.
        out.put(session_started(config, session_id, self.runtime.settings))
        session: Any
        mode = config.mode or agent_pb2.AGENT_MODE_PIPELINE
        try:
            hybrid = await self._hybrid_spec(context) if mode == agent_pb2.AGENT_MODE_HYBRID else None
            if mode == agent_pb2.AGENT_MODE_DUPLEX:
                if self.runtime.backends_duplex is None:
                    await abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                                "duplex mode is not configured on this orchestrator (set duplex_backends)",
                                field="config.mode")
                session = DuplexRelay(config, session_id, self.runtime.backends_duplex, out)
            else:
                try:
                    await self.catalog.check(config)
                except ValueError as exc:
                    await config_abort(context, exc)
                s = self.runtime.settings
                # An explicit "" persona (session or profile) means none; unset means the default one.
                persona = "" if config.HasField("system_prompt") else s.default_system_prompt
                session = PipelineSession(
                    config, session_id, self.runtime.backends,
                    ToolRunner(list(config.tools), self.runtime.knowledge, s.max_tool_result_chars),
                    out, system_prompt=persona, max_history_tokens=s.max_history_tokens,
                    max_tokens=s.max_tokens, playout_lead_ms=s.playout_lead_ms,
                    reconnect_attempts=s.reconnect_attempts, limits=InputLimits.from_settings(s),
                    tts_first_chunk_chars=s.tts_first_chunk_chars,
                    speculative_turns=s.speculative_turns, first_audio_after_ms=s.first_audio_after_ms,
                    first_audio_min_words=s.first_audio_min_words, hybrid=hybrid)
            if isinstance(session, PipelineSession):
                session.control.attach(self.runtime, self.catalog)  # live updates: profiles, settings, voices
            await session.open()
        except BackendError as err:
            code = err.code if err.code != grpc.StatusCode.RESOURCE_EXHAUSTED else grpc.StatusCode.UNAVAILABLE
            await abort(context, code, f"{err.stage} stage: {err.message}", metadata={"stage": err.stage},
                        reason=Reason.STAGE_UNAVAILABLE if code == grpc.StatusCode.UNAVAILABLE else None)

        async def on_request(request: agent_pb2.ConverseRequest) -> None:
            if request.HasField("audio"):  # a neural suppressor behind on this call holds the reader
                await session.caller_edge.ready()
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
