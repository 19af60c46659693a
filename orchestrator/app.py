"""The orchestrator replica: the Agent service, its backend pools and its knowledge collections."""

from __future__ import annotations

import asyncio

import grpc
from voxgrid.orchestrator import telemetry
from voxgrid.orchestrator.discovery import parse_discovery
from voxgrid.orchestrator.knowledge import KnowledgeBase, load_collections
from voxgrid.orchestrator.profiles import ProfileStore
from voxgrid.orchestrator.readiness import StageReadiness
from voxgrid.orchestrator.routing import BackendPool
from voxgrid.orchestrator.servicer import AgentServicer
from voxgrid.orchestrator.session import Backends
from voxgrid.orchestrator.settings import Settings

from voxgrid.server.chassis import ServiceRuntime
from voxgrid.server.health import ReplicaHealth
from voxgrid.v1 import agent_pb2, agent_pb2_grpc, duplex_pb2_grpc, llm_pb2_grpc, stt_pb2_grpc, tts_pb2_grpc

__all__ = ["AgentRuntime", "Settings", "create_runtime"]


class AgentRuntime(ServiceRuntime):
    name = "orchestrator"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        missing = [s for s in ("stt", "llm", "tts") if not getattr(settings, f"{s}_backends")]
        if missing:
            raise ValueError(f"set the {', '.join(missing)} backends (e.g. VOXGRID_ORCHESTRATOR_STT_BACKENDS="
                             "static:127.0.0.1:50061)")

        def pool(stage: str, stub: type) -> BackendPool:
            return BackendPool(stage, parse_discovery(getattr(settings, f"{stage}_backends"), settings.dns_refresh_s),
                               stub, token=settings.backend_token, connect_timeout_s=settings.connect_timeout_s)

        self.backends = Backends(stt=pool("stt", stt_pb2_grpc.SpeechToTextStub),
                                 llm=pool("llm", llm_pb2_grpc.LanguageModelStub),
                                 tts=pool("tts", tts_pb2_grpc.TextToSpeechStub))
        self.backends_duplex = pool("duplex", duplex_pb2_grpc.DuplexStub) if settings.duplex_backends else None
        self.knowledge: dict[str, KnowledgeBase] = {}
        self.profiles = ProfileStore(settings.profiles_file, settings.default_profile)
        self.profiles.load()  # a bad profile file stops the replica here, naming the profile and field
        self.readiness: StageReadiness | None = None
        self._loop_watch: asyncio.Task[None] | None = None

    def service_names(self) -> list[str]:
        return [agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name]

    def register(self, server: grpc.aio.Server) -> None:
        agent_pb2_grpc.add_AgentServicer_to_server(AgentServicer(self), server)

    def bind_health(self, health: ReplicaHealth) -> None:
        self.readiness = StageReadiness(self.pools(), health, self.settings.health_check_interval_s,
                                        self.settings.connect_timeout_s)

    def pools(self) -> list[BackendPool]:
        return [self.backends.stt, self.backends.llm, self.backends.tts,
                *([self.backends_duplex] if self.backends_duplex else [])]

    async def start(self) -> None:
        self._loop_watch = asyncio.create_task(telemetry.watch_event_loop())
        self.knowledge = load_collections(self.settings.knowledge_dir)
        for p in self.pools():
            await p.start()
        if self.readiness is not None:
            await self.readiness.start()

    async def stop(self) -> None:
        if self._loop_watch is not None:
            self._loop_watch.cancel()
        if self.readiness is not None:
            await self.readiness.stop()
        for p in self.pools():
            await p.close()


def create_runtime(settings: Settings) -> AgentRuntime:
    return AgentRuntime(settings)
