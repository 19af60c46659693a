"""The orchestrator's health means "a call will work": NOT_SERVING while a pipeline stage has no SERVING
replica (still loading, or gone), SERVING once each has one, and one health name per stage says which is
missing. Real gRPC over loopback, with the fake backends."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from voxgrid.orchestrator.app import AgentRuntime
from voxgrid.orchestrator.client import AgentCall, session_config
from voxgrid.orchestrator.settings import Settings

from tests.orchestrator.conftest import RATE, tone
from tests.orchestrator.fakes import (
    FakeDuplex,
    FakeLlm,
    FakeRuntime,
    FakeStt,
    FakeTts,
    backend_settings,
    duplex_runtime,
    llm_runtime,
    stt_runtime,
    tts_runtime,
)
from voxgrid.client import channel, health_status
from voxgrid.server.chassis import ServiceServer, start_server
from voxgrid.v1 import agent_pb2_grpc

pytestmark = pytest.mark.e2e
AGENT = "voxgrid.v1.Agent"


class LoadingBackend(FakeRuntime):
    """A fake backend that stays NOT_SERVING (as a real one does while its model loads) until `loaded` is set."""

    def __init__(self, inner: FakeRuntime) -> None:
        super().__init__(inner.name, inner._servicer, inner._add, inner._service)
        self.loaded = asyncio.Event()

    async def start(self) -> None:
        await self.loaded.wait()


async def statuses(orchestrator: ServiceServer) -> dict[str, str]:
    names = ["", AGENT, *(f"{AGENT}/{stage}" for stage in ("stt", "llm", "tts", "duplex"))]
    async with channel(orchestrator.address) as ch:
        return {name: await health_status(ch, name) for name in names}


async def until_status(orchestrator: ServiceServer, want: dict[str, str], timeout_s: float = 20) -> dict[str, str]:
    """The health statuses once they match `want` (checks run every 0.1 s here), or the last ones seen."""
    seen: dict[str, str] = {}
    for _ in range(int(timeout_s / 0.05)):
        seen = await statuses(orchestrator)
        if all(seen[name] == status for name, status in want.items()):
            break
        await asyncio.sleep(0.05)
    return seen


def orchestrator_settings(servers: dict[str, ServiceServer], **kw: object) -> Settings:
    return Settings(port=0, health_check_interval_s=0.1, connect_timeout_s=2,
                    **{f"{name}_backends": f"static:{s.address}" for name, s in servers.items()}, **kw)


async def test_not_serving_while_a_stage_loads_serving_once_every_stage_can_take_a_call(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="voxgrid.orchestrator.readiness")
    llm = LoadingBackend(llm_runtime(FakeLlm()))
    async with contextlib.AsyncExitStack() as stack:
        servers = {
            "stt": await stack.enter_async_context(start_server(stt_runtime(FakeStt(["hello there"])),
                                                                backend_settings())),
            "llm": await stack.enter_async_context(start_server(llm, backend_settings(), wait_ready=False)),
            "tts": await stack.enter_async_context(start_server(tts_runtime(FakeTts()), backend_settings())),
        }
        settings = orchestrator_settings(servers)
        orch = await stack.enter_async_context(start_server(AgentRuntime(settings), settings))
        # Loaded itself, but the LLM is not: a probe must not send calls here yet.
        seen = await statuses(orch)
        assert seen == {"": "NOT_SERVING", AGENT: "NOT_SERVING", f"{AGENT}/stt": "SERVING",
                        f"{AGENT}/llm": "NOT_SERVING", f"{AGENT}/tts": "SERVING", f"{AGENT}/duplex": "NOT_FOUND"}
        assert f"NOT_SERVING: llm stage: no SERVING replica ({servers['llm'].address} NOT_SERVING)" in caplog.text
        async with channel(orch.address) as ch:  # ... but it is alive: a liveness probe must not restart it
            assert await health_status(ch, "voxgrid.liveness") == "SERVING"

        llm.loaded.set()
        seen = await until_status(orch, {"": "SERVING", AGENT: "SERVING", f"{AGENT}/llm": "SERVING"})
        assert seen[""] == seen[AGENT] == seen[f"{AGENT}/llm"] == "SERVING", seen
        assert "every pipeline stage (stt, llm, tts) has a SERVING replica" in caplog.text
        # SERVING means a call works: the first turn of the first call is answered.
        async with channel(orch.address) as ch, AgentCall(agent_pb2_grpc.AgentStub(ch), session_config()) as call:
            await call.stream(tone(0.8), RATE)
            await call.silence(10, until=lambda: call.turn_over(1)(call.record))
            assert call.error is None and "hello there" in call.record.agent_text(1).lower()

        await servers["tts"].stop()  # the only TTS replica goes away
        seen = await until_status(orch, {"": "NOT_SERVING", AGENT: "NOT_SERVING", f"{AGENT}/tts": "NOT_SERVING"})
        assert seen[""] == seen[AGENT] == seen[f"{AGENT}/tts"] == "NOT_SERVING", seen
        assert seen[f"{AGENT}/stt"] == seen[f"{AGENT}/llm"] == "SERVING"
        assert f"NOT_SERVING: tts stage: no SERVING replica ({servers['tts'].address} " in caplog.text
        # Logged on the transition, not on every check.
        logged = caplog.text.count("NOT_SERVING: tts stage")
        await asyncio.sleep(0.5)
        assert caplog.text.count("NOT_SERVING: tts stage") == logged


async def test_a_stage_with_no_known_replica_is_named_and_duplex_never_holds_the_pipeline_back(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="voxgrid.orchestrator.readiness")
    async with contextlib.AsyncExitStack() as stack:
        runtimes = {"stt": stt_runtime(FakeStt([])), "llm": llm_runtime(FakeLlm()), "tts": tts_runtime(FakeTts())}
        servers = {name: await stack.enter_async_context(start_server(runtime, backend_settings()))
                   for name, runtime in runtimes.items()}
        duplex = await stack.enter_async_context(start_server(duplex_runtime(FakeDuplex()), backend_settings()))
        settings = orchestrator_settings(servers, duplex_backends=f"static:{duplex.address}")
        orch = await stack.enter_async_context(start_server(AgentRuntime(settings), settings))
        assert (await statuses(orch))[f"{AGENT}/duplex"] == "SERVING"
        await duplex.stop()
        seen = await until_status(orch, {f"{AGENT}/duplex": "NOT_SERVING"})
        assert seen[f"{AGENT}/duplex"] == "NOT_SERVING" and seen[AGENT] == "SERVING", seen

        # A dns: name that resolves to nothing: the stage is named with where to look.
        empty = Settings(port=0, health_check_interval_s=0.1, stt_backends=f"static:{servers['stt'].address}",
                         llm_backends="dns:voxgrid-llm.invalid:50051", tts_backends=f"static:{servers['tts'].address}")
        lonely = await stack.enter_async_context(start_server(AgentRuntime(empty), empty))
        seen = await statuses(lonely)
        assert seen[AGENT] == "NOT_SERVING" and seen[f"{AGENT}/llm"] == "NOT_SERVING"
        assert "llm stage: no replica is known (check llm_backends / discovery)" in caplog.text
