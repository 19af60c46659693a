"""Routing across replicas: least-loaded choice, failover on refusal, a replica killed mid-session."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from voxgrid.orchestrator.app import AgentRuntime
from voxgrid.orchestrator.client import TE, AgentCall, session_config
from voxgrid.orchestrator.discovery import DnsDiscovery, StaticDiscovery, parse_discovery, ready_addresses
from voxgrid.orchestrator.routing import BackendError, BackendPool
from voxgrid.orchestrator.settings import Settings

from tests.orchestrator.conftest import RATE, tone
from tests.orchestrator.fakes import FakeLlm, FakeStt, FakeTts, backend_settings, llm_runtime, stt_runtime, tts_runtime
from voxgrid.client import channel
from voxgrid.server.chassis import start_server
from voxgrid.v1 import agent_pb2_grpc, stt_pb2, stt_pb2_grpc


def test_discovery_specs() -> None:
    assert parse_discovery("static:a:1,b:2").targets == ["a:1", "b:2"]
    assert parse_discovery("a:1").targets == ["a:1"]
    dns = parse_discovery("dns:voxgrid-stt.ns.svc:50051")
    assert isinstance(dns, DnsDiscovery) and dns.port == 50051
    k8s = parse_discovery("k8s:voice/voxgrid-stt:50051")
    assert (k8s.namespace, k8s.service, k8s.port) == ("voice", "voxgrid-stt", 50051)
    with pytest.raises(ValueError, match="needs a port"):
        parse_discovery("dns:name")
    with pytest.raises(ValueError, match="NAMESPACE/SERVICE"):
        parse_discovery("k8s:svc:1")


def test_endpoint_slices_give_ready_pods_only() -> None:
    slices = [{"endpoints": [
        {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
        {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},  # terminating / not ready
        {"addresses": ["fd00::3"], "conditions": {}},  # unknown counts as ready
    ]}, {"endpoints": None}]
    assert ready_addresses(slices, 50051) == ["10.0.0.1:50051", "[fd00::3]:50051"]


async def test_dns_discovery_returns_every_address_of_a_name() -> None:
    d = DnsDiscovery("localhost", 50051, refresh_s=60)
    await d.start()
    try:
        assert "127.0.0.1:50051" in d.targets
    finally:
        await d.stop()


async def test_pool_prefers_the_least_loaded_replica_and_fails_over_on_refusal() -> None:
    async with contextlib.AsyncExitStack() as stack:
        full = await stack.enter_async_context(start_server(stt_runtime(FakeStt([])), backend_settings(max_sessions=1)))
        free = await stack.enter_async_context(start_server(stt_runtime(FakeStt([])), backend_settings()))
        pool = BackendPool("stt", StaticDiscovery([full.address, free.address]), stt_pb2_grpc.SpeechToTextStub)
        config = stt_pb2.RecognizeRequest(config=stt_pb2.RecognitionConfig(format=session_config().input_format))
        # Fill the small replica from outside this pool (another orchestrator's session).
        other = BackendPool("stt", StaticDiscovery([full.address]), stt_pb2_grpc.SpeechToTextStub)
        hog = await other.open("StreamingRecognize", config)
        streams = [await pool.open("StreamingRecognize", config) for _ in range(3)]
        assert {s.target for s in streams} == {free.address}  # the full one refused; no session was lost
        hog.close()
        await asyncio.sleep(0.1)
        pool._cooling_until.clear()
        nxt = await pool.open("StreamingRecognize", config)
        assert nxt.target == full.address  # now the least loaded from this orchestrator's view
        for s in [*streams, nxt]:
            s.close()
        await pool.close()
        await other.close()


async def test_no_replica_gives_unavailable_with_what_was_tried() -> None:
    pool = BackendPool("llm", StaticDiscovery(["127.0.0.1:9"]), stt_pb2_grpc.SpeechToTextStub, connect_timeout_s=1)
    with pytest.raises(BackendError) as err:
        await pool.open("StreamingRecognize", stt_pb2.RecognizeRequest())
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and "tried 1" in err.value.message
    await pool.close()


@pytest.mark.e2e
async def test_a_backend_killed_mid_session_is_replaced_and_the_conversation_goes_on() -> None:
    async with contextlib.AsyncExitStack() as stack:
        ttss = [await stack.enter_async_context(start_server(tts_runtime(FakeTts()), backend_settings()))
                for _ in range(2)]
        stt = await stack.enter_async_context(start_server(
            stt_runtime(FakeStt(["first question", "second question"])), backend_settings()))
        llm = await stack.enter_async_context(start_server(llm_runtime(FakeLlm()), backend_settings()))
        settings = Settings(port=0, stt_backends=stt.address, llm_backends=llm.address,
                            tts_backends="static:" + ",".join(t.address for t in ttss))
        orch = await stack.enter_async_context(start_server(AgentRuntime(settings), settings))
        async with channel(orch.address) as ch, AgentCall(agent_pb2_grpc.AgentStub(ch), session_config()) as call:
            await call.stream(tone(0.8), RATE)
            await call.silence(10, until=lambda: call.turn_over(1)(call.record))
            victim = next(t for t in ttss if t.gate.active == 1)
            await victim.stop()  # the pod dies
            await call.silence(0.5)
            await call.stream(tone(0.8), RATE)
            await call.silence(10, until=lambda: call.turn_over(2)(call.record))
            assert call.error is None
            assert any(n.stage == "tts" and "continued on" in n.message for n in call.record.of("notice"))
            assert "You said second question." in call.record.agent_text(2)
            assert call.record.events(TE.KIND_AGENT_STOPPED_SPEAKING)[-1].turn_id == 2
