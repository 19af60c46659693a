from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from voxgrid.orchestrator.app import AgentRuntime
from voxgrid.orchestrator.settings import Settings

from tests.orchestrator.fakes import (
    FakeLlm,
    FakeStt,
    FakeTts,
    backend_settings,
    llm_runtime,
    stt_runtime,
    tts_runtime,
)
from voxgrid.client import channel
from voxgrid.server.chassis import ServiceServer, start_server
from voxgrid.v1 import agent_pb2_grpc

RATE = 16000


def tone(seconds: float, amplitude: float = 0.3) -> np.ndarray:
    """A stand-in utterance for the energy-based fake STT."""
    t = np.arange(int(RATE * seconds)) / RATE
    return (amplitude * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


@dataclass
class Stack:
    stt: FakeStt
    llm: FakeLlm
    tts: FakeTts
    servers: dict[str, ServiceServer]
    orchestrator: ServiceServer
    stub: agent_pb2_grpc.AgentStub


@contextlib.asynccontextmanager
async def fake_stack(script: list[str], *, llm: FakeLlm | None = None, tts: FakeTts | None = None,
                     knowledge_dir: Path | None = None, stt: FakeStt | None = None, **orchestrator_kw):
    fakes = {"stt": stt or FakeStt(script), "llm": llm or FakeLlm(), "tts": tts or FakeTts()}
    makers = {"stt": stt_runtime, "llm": llm_runtime, "tts": tts_runtime}
    async with contextlib.AsyncExitStack() as stack:
        servers = {name: await stack.enter_async_context(start_server(makers[name](fake), backend_settings()))
                   for name, fake in fakes.items()}
        settings = Settings(port=0, **{f"{n}_backends": f"static:{s.address}" for n, s in servers.items()},
                            knowledge_dir=knowledge_dir, **orchestrator_kw)
        orch = await stack.enter_async_context(start_server(AgentRuntime(settings), settings))
        ch = await stack.enter_async_context(channel(orch.address))
        yield Stack(fakes["stt"], fakes["llm"], fakes["tts"], servers, orch, agent_pb2_grpc.AgentStub(ch))


@pytest.fixture
def make_stack():
    return fake_stack
