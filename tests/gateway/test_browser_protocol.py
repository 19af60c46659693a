"""The browser socket over the fake backends, health/readiness/drain, profiles, the edge clock, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import aiohttp
import numpy as np
import pytest
from voxgrid.gateway.browser import AUDIO_HEADER
from voxgrid.gateway.calls import CLOSE_BAD_PAYLOAD, CLOSE_GOING_AWAY, CLOSE_RESTARTING
from voxgrid.gateway.latency import EdgeClock
from voxgrid.gateway.media_client import MediaStreamCaller
from voxgrid.gateway.profiles import ProfileError, ProfileRoutes

from benchmarks.common import ROOT, free_port
from tests.gateway.conftest import ALL_CLOSED, mulaw_tone, settled
from tests.gateway.test_phone import START, closed_with
from tests.orchestrator.conftest import RATE, tone
from voxgrid.audio import encode, pcm16_spec
from voxgrid.v1 import agent_pb2

pytestmark = pytest.mark.e2e
PCM = pcm16_spec(RATE)


async def messages_until(ws: aiohttp.ClientWebSocketResponse, done, timeout_s: float = 15.0) -> list:
    got: list = []
    async def run() -> None:
        while not done(got):
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                got.append(json.loads(msg.data))
            elif msg.type == aiohttp.WSMsgType.BINARY:
                got.append(msg.data)
            else:
                return
    await asyncio.wait_for(run(), timeout_s)
    return got


async def test_browser_audio_transcripts_events_and_the_interrupt_button(make_gateway) -> None:
    async with make_gateway(["tell me a story"]) as gs, aiohttp.ClientSession() as s:
        gs.agent.llm.reply = lambda m, t: "A long story begins here, and it goes on, and on, and on, for a while."
        async with s.ws_connect(gs.ws + "/ws") as ws:
            ready = json.loads((await ws.receive(timeout=5)).data)
            assert ready["type"] == "ready" and ready["sample_rate"] == 16000
            data = encode(np.concatenate([tone(1.0), np.zeros(RATE // 2, np.float32)]), PCM)
            for i in range(0, len(data), 640):
                await ws.send_bytes(data[i:i + 640])
                await asyncio.sleep(0.02)
            got = await messages_until(ws, lambda g: any(isinstance(m, bytes) for m in g) and any(
                isinstance(m, dict) and m.get("kind") == "agent_started_speaking" for m in g))
            texts = [m for m in got if isinstance(m, dict)]
            assert any(m["type"] == "transcript" and m["final"] and m["text"] == "tell me a story" for m in texts)
            audio = [m for m in got if isinstance(m, bytes)]
            turn, offset = AUDIO_HEADER.unpack(audio[0][:8])
            assert turn == 1 and offset == 0 and (len(audio[0]) - 8) % 2 == 0
            await ws.send_str(json.dumps({"type": "playback", "turn_id": 1, "played_ms": 200}))
            await ws.send_str(json.dumps({"type": "interrupt"}))
            rest = await messages_until(ws, lambda g: any(isinstance(m, dict) and m.get("kind") == "interrupted"
                                                         for m in g))
            cut = rest[-1]
            assert cut["turn_id"] == 1 and len(cut["heard_text"]) < 30  # about 200 ms of it was heard
        assert await settled(gs) == ALL_CLOSED


async def test_browser_bad_frames_are_refused_with_a_reason(make_gateway) -> None:
    async with make_gateway(["hi"]) as gs:
        code, reason = await closed_with(gs.ws + "/ws", b"\x00\x01\x02")
        assert code == CLOSE_BAD_PAYLOAD and "whole PCM16 samples" in reason
        code, reason = await closed_with(gs.ws + "/ws", {"type": "dance"})
        assert code == CLOSE_BAD_PAYLOAD and "unknown message" in reason
        code, reason = await closed_with(gs.ws + "/ws", {"type": "playback", "turn_id": "x"})
        assert code == CLOSE_BAD_PAYLOAD and "integer" in reason


async def test_health_readiness_and_drain(make_gateway) -> None:
    async with make_gateway(["hi"], drain_grace_s=0.5) as gs, aiohttp.ClientSession() as s:
        for path, status in (("/healthz", 200), ("/readyz", 200), ("/", 200), ("/static/app.js", 200)):
            async with s.get(gs.http + path) as r:
                assert r.status == status, path
        async with MediaStreamCaller(gs.ws + "/phone") as live:
            await live.start()
            line = asyncio.create_task(live.silence(5, until=lambda: live.closed))
            await asyncio.sleep(0.3)
            drain = asyncio.create_task(gs.gateway.drain())
            await asyncio.sleep(0.1)
            async with s.get(gs.http + "/readyz") as r:
                assert r.status == 503 and "draining" in await r.text()
            code, reason = await closed_with(gs.ws + "/phone", START)
            assert code == CLOSE_RESTARTING and "shutting down" in reason
            await drain  # the live call outlasts the grace period: it is closed for the client to reconnect
            await live.wait_for(lambda c: c.closed, timeout_s=5)
            assert live.close_code == CLOSE_GOING_AWAY
            await line


def test_profile_routes_map_a_number_or_page_to_a_profile_name() -> None:
    routes = ProfileRoutes.from_settings('{"+15550100": "support"}', "+15550100")
    assert routes.profile_for("+15550100") == "support" and routes.profile_for("sales") == "sales"
    assert routes.profile_for("") == "support"  # the default is a route key too
    assert ProfileRoutes.from_settings("", "").profile_for("") == ""  # the orchestrator's default then
    with pytest.raises(ProfileError, match="not valid JSON"):
        ProfileRoutes.from_settings("{", "")
    with pytest.raises(ProfileError, match="non-empty profile names"):  # personas live on the orchestrator
        ProfileRoutes.from_settings('{"x": {"systemPrompt": "?"}}', "")


async def test_the_gateway_names_the_profile_and_the_orchestrator_applies_it(make_gateway, tmp_path) -> None:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("support: {systemPrompt: You are Acme support.}\nsales: {systemPrompt: You sell.}\n")
    async with make_gateway(["my order is late", "what do you sell"], orchestrator_kw={"profiles_file": profiles},
                            profile_routes='{"+15550100": "support"}') as gs:
        async with MediaStreamCaller(gs.ws + "/phone/+15550100") as caller:  # a number routed to a profile
            await caller.start()
            await caller.stream(mulaw_tone(1.0))
            await caller.silence(10, until=lambda: bool(caller.of("media")))
        async with aiohttp.ClientSession() as s, s.ws_connect(gs.ws + "/ws?profile=sales") as ws:  # a page by name
            ready = json.loads((await ws.receive(timeout=5)).data)
            assert ready["profile"] == "sales"
            data = encode(np.concatenate([tone(1.0), np.zeros(RATE // 2, np.float32)]), PCM)
            for i in range(0, len(data), 640):
                await ws.send_bytes(data[i:i + 640])
                await asyncio.sleep(0.02)
            await messages_until(ws, lambda g: any(isinstance(m, bytes) for m in g))
        personas = [r.messages[0].content for r in gs.agent.llm.requests]
        assert personas == ["You are Acme support.", "You sell."]


def test_edge_clock_measures_from_the_speech_end_frame_to_the_first_audio_out() -> None:
    clock = EdgeClock(PCM)
    for i in range(100):  # 2 s of 20 ms frames, arriving at t = 0.02 * (i + 1)
        clock.received(640, at=0.02 * (i + 1))
    stopped = agent_pb2.ConverseResponse(turn_event=agent_pb2.TurnEvent(
        kind=agent_pb2.TurnEvent.KIND_USER_STOPPED_SPEAKING, audio_offset_ms=1600))
    clock.observe(stopped)
    clock.audio_sent(1, at=2.5)
    clock.audio_sent(1, at=2.9)  # later chunks of the turn do not count
    v2v = clock.voice_to_voice_s(agent_pb2.TurnLatency(turn_id=1, endpoint_wait_ms=300))
    assert v2v == pytest.approx(2.5 - 1.3)  # speech ended at 1300 ms, whose frame arrived at t = 1.3
    clock.audio_sent(2, at=3.0)  # a greeting or typed turn: no speech end of its own
    assert clock.voice_to_voice_s(agent_pb2.TurnLatency(turn_id=2)) is None


def test_voxgrid_serve_gateway_runs_its_own_server_and_drains_on_sigterm() -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VOXGRID_GATEWAY_PORT": str(port),
           "VOXGRID_GATEWAY_ORCHESTRATOR_BACKENDS": "static:127.0.0.1:9"}
    proc = subprocess.Popen([sys.executable, "-m", "voxgrid", "serve", "gateway", "--drain-grace-s", "1"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        async def healthy() -> str:
            for _ in range(100):
                try:
                    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
                        return await r.text()
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            return ""
        assert asyncio.run(healthy()) == "ok\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert "gateway draining" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
