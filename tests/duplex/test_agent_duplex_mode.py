"""The Agent API in duplex mode against a real duplex replica (small random Moshi on CPU)."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

pytest.importorskip("moshi", reason="duplex tests need the moshi venv (deploy/duplex-env.sh)")

from voxgrid.orchestrator.app import AgentRuntime
from voxgrid.orchestrator.client import AgentCall, session_config
from voxgrid.orchestrator.settings import Settings as OrchestratorSettings
from voxgrid.services.duplex.app import DuplexRuntime, Settings

from voxgrid.client import channel
from voxgrid.server.chassis import start_server
from voxgrid.v1 import agent_pb2, agent_pb2_grpc

pytestmark = pytest.mark.e2e


async def test_a_duplex_session_through_the_orchestrator_streams_both_ways() -> None:
    settings = Settings(port=0, slots=2)
    async with contextlib.AsyncExitStack() as stack:
        duplex = await stack.enter_async_context(start_server(DuplexRuntime(settings), settings))
        orch_settings = OrchestratorSettings(port=0, stt_backends="127.0.0.1:9", llm_backends="127.0.0.1:9",
                                             tts_backends="127.0.0.1:9", duplex_backends=duplex.address)
        orch = await stack.enter_async_context(start_server(AgentRuntime(orch_settings), orch_settings))
        ch = await stack.enter_async_context(channel(orch.address))
        config = session_config(rate=8000, encoding=2, mode=agent_pb2.AGENT_MODE_DUPLEX)  # phone audio
        async with AgentCall(agent_pb2_grpc.AgentStub(ch), config) as call:
            t = np.arange(8000 * 2) / 8000
            await call.stream((0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 8000)
            await call.wait_for(lambda r: len(r.of("agent_audio")) >= 10, timeout_s=60)
            frames = call.record.of("agent_audio")
            # 80 ms of 8 kHz mu-law per model frame, less the streaming resampler's delay (under 100 ms in all)
            assert 0 <= 640 * len(frames) - sum(len(f.data) for f in frames) <= 800
            assert all(f.data for f in frames[1:])
            offsets = [f.audio_offset_ms for f in frames]
            assert offsets == sorted(offsets) and offsets[1] - offsets[0] == 80
            assert call.record.agent_text()  # the random model's text tokens, relayed
        for _ in range(50):
            if duplex.gate.active == 0:
                break
            await asyncio.sleep(0.1)
        assert duplex.gate.active == 0  # the caller left: the slot is free again
