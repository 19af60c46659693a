"""LLM service: chat generation with streaming tokens, prewarm and cancel (`voxgrid serve llm`)."""

from __future__ import annotations

import grpc
from voxgrid.services.llm.engines.base import LlmEngine
from voxgrid.services.llm.servicer import LanguageModelServicer
from voxgrid.services.llm.settings import LlmSettings

from voxgrid.server.chassis import ServiceRuntime
from voxgrid.v1 import llm_pb2, llm_pb2_grpc

Settings = LlmSettings


def create_engine(settings: LlmSettings) -> LlmEngine:
    """The engine `settings.engine` names; vLLM is imported only when chosen."""
    if settings.engine == "vllm":
        from voxgrid.services.llm.engines.vllm_engine import VllmEngine

        return VllmEngine(settings)
    from voxgrid.services.llm.engines.transformers_engine import TransformersEngine

    return TransformersEngine(settings)


class LlmRuntime(ServiceRuntime):
    name = "llm"

    def __init__(self, settings: LlmSettings, engine: LlmEngine | None = None) -> None:
        self.settings = settings
        self.engine = engine or create_engine(settings)

    def service_names(self) -> list[str]:
        return [llm_pb2.DESCRIPTOR.services_by_name["LanguageModel"].full_name]

    def register(self, server: grpc.aio.Server) -> None:
        llm_pb2_grpc.add_LanguageModelServicer_to_server(LanguageModelServicer(self.engine, self.settings), server)

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()


def create_runtime(settings: LlmSettings) -> LlmRuntime:
    return LlmRuntime(settings)
