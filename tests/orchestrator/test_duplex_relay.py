"""Duplex mode: the Agent API relays to a full-duplex replica both ways."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest
from voxgrid.orchestrator.app import AgentRuntime
from voxgrid.orchestrator.client import AgentCall, session_config
from voxgrid.orchestrator.settings import Settings

from tests.orchestrator.conftest import RATE, tone
from tests.orchestrator.fakes import FakeDuplex, backend_settings, duplex_runtime
from voxgrid.client import channel
from voxgrid.server.chassis import start_server
from voxgrid.v1 import agent_pb2, agent_pb2_grpc

pytestmark = pytest.mark.e2e


async def test_duplex_sessions_are_relayed_both_ways() -> None:
    async with contextlib.AsyncExitStack() as stack:
        duplex = await stack.enter_async_context(start_server(duplex_runtime(FakeDuplex()), backend_settings()))
        settings = Settings(port=0, stt_backends="127.0.0.1:9", llm_backends="127.0.0.1:9",
                            tts_backends="127.0.0.1:9", duplex_backends=duplex.address)
        orch = await stack.enter_async_context(start_server(AgentRuntime(settings), settings))
        async with channel(orch.address) as ch:
            config = session_config(mode=agent_pb2.AGENT_MODE_DUPLEX)
            async with AgentCall(agent_pb2_grpc.AgentStub(ch), config) as call:
                x = tone(0.8)
                await call.stream(x, RATE)
                await call.wait_for(lambda r: len(r.of("agent_audio")) >= 10, timeout_s=10)
                back = call.record.agent_audio(call.out_spec)
                assert np.corrcoef(back[:12000], -x[:12000])[0, 1] > 0.99  # what the model "said", in order
                assert call.record.agent_text().startswith("w0 w1 ")
            for _ in range(50):  # the relay's backend stream closes with the caller's
                if duplex.gate.active == 0:
                    break
                await asyncio.sleep(0.1)
            assert duplex.gate.active == 0
