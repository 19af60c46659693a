"""What the gateway hop costs: voice-to-voice at the gateway edge versus at the orchestrator.

The real local stack (faster-whisper tiny.en, Qwen2.5 0.5B on CPU, Piper) runs as `voxgrid serve`
processes on loopback, the gateway as another. The same spoken questions (flite) are asked twice, one
per call, paced like a microphone:
  - direct: a gRPC Converse client at the orchestrator (its TurnLatency record);
  - gateway: the browser WebSocket protocol through the gateway, whose `latency` events carry both the
    orchestrator's figure and the gateway's own (caller's speech-end frame received at the gateway ->
    first agent audio written to the socket) for the same turn; plus what this client saw (its last
    speech frame sent -> first agent audio received), which adds the client hop and loopback.

    python benchmarks/bench_gateway.py [--questions 6]

With `--transports` it compares the browser's two ways in instead (no direct calls): each question is asked
over the WebSocket and over WebRTC (aiortc, Opus both ways, loopback ICE), alternating so both see the same
machine load; the table gives the orchestrator's figure, the gateway edge's and what the caller saw (its
last speech frame sent -> first agent audio received: for WebRTC this adds Opus and the receiver's jitter
buffer).

    python benchmarks/bench_gateway.py --transports [--questions 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voxgrid.orchestrator.client import AgentCall, session_config

from benchmarks.bench_orchestrator import QUESTIONS
from benchmarks.common import ROOT, ServiceProcess, free_port, pct, table
from voxgrid.audio import encode, pcm16_spec
from voxgrid.client import channel
from voxgrid.speech import synthesize
from voxgrid.v1 import agent_pb2_grpc

RATE = 16000
FRAME = 640  # 20 ms of PCM16 at 16 kHz


async def ask_direct(stub: agent_pb2_grpc.AgentStub, speech: np.ndarray) -> float:
    async with AgentCall(stub, session_config()) as call:
        await call.silence(0.3)
        await call.stream(speech, RATE)
        await call.silence(60, until=lambda: bool(call.record.of("latency")) or call.done.is_set())
        await call.silence(60, until=lambda: call.turn_over(1)(call.record) or call.done.is_set())
        return call.record.of("latency")[0].voice_to_voice_ms


async def ask_gateway(url: str, speech: np.ndarray) -> tuple[float, float, float]:
    """(orchestrator v2v, gateway-edge v2v, caller-seen v2v) of one spoken question through /ws, ms."""
    data = encode(speech, pcm16_spec(RATE))
    silence = bytes(FRAME)
    state: dict = {"latency": None, "done": False, "first_audio": None}

    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        async def read() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    ev = json.loads(msg.data)
                    if ev["type"] == "latency":
                        state["latency"] = ev
                    elif ev["type"] == "event" and ev["kind"] in ("agent_stopped_speaking", "interrupted"):
                        state["done"] = True
                elif msg.type == aiohttp.WSMsgType.BINARY and state["first_audio"] is None:
                    state["first_audio"] = time.monotonic()

        reader = asyncio.create_task(read())
        t0 = time.monotonic()
        frames = [silence] * 15 + [data[i:i + FRAME] for i in range(0, len(data), FRAME)]
        i = 0
        last_speech = 0.0
        while not (state["done"] and state["latency"]) and time.monotonic() - t0 < 90:
            await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))
            await ws.send_bytes(frames[i] if i < len(frames) else silence)
            if i == len(frames) - 1:
                last_speech = time.monotonic()
            i += 1
        reader.cancel()
    lat = state["latency"]
    return lat["voice_to_voice_ms"], lat["edge_voice_to_voice_ms"], (state["first_audio"] - last_speech) * 1000


async def ask_webrtc(base_url: str, speech: np.ndarray) -> tuple[float, float, float]:
    """(orchestrator v2v, gateway-edge v2v, caller-seen v2v) of one spoken question through /webrtc, ms."""
    from voxgrid.gateway.webrtc_client import WebRTCCaller

    async with WebRTCCaller(base_url) as c:
        await c.wait(lambda c: bool(c.of("ready")), 15)
        await c.say(np.concatenate([np.zeros(int(RATE * 0.3), np.float32), speech]), RATE)
        await c.wait(lambda c: bool(c.of("latency")) and any(
            e["kind"] in ("agent_stopped_speaking", "interrupted") for e in c.of("event")), 90)
        lat = c.of("latency")[0]
        first = next(t for t, _ in c.frames if t > c.mic_done_at)
        return lat["voice_to_voice_ms"], lat["edge_voice_to_voice_ms"], (first - c.mic_done_at) * 1000


class GatewayProcess:
    def __init__(self, orchestrator: str) -> None:
        self.port = free_port()
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "VOXGRID_GATEWAY_PORT": str(self.port),
                    "VOXGRID_GATEWAY_ORCHESTRATOR_BACKENDS": f"static:{orchestrator}",
                    "VOXGRID_GATEWAY_LOG_LEVEL": "WARNING", "VOXGRID_GATEWAY_IDLE_TIMEOUT_S": "120",
                    "VOXGRID_GATEWAY_WEBRTC_ICE_ADDRESSES": "127.0.0.1"}

    async def __aenter__(self) -> GatewayProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "voxgrid", "serve", "gateway"], env=self.env)
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                try:
                    async with s.get(f"http://127.0.0.1:{self.port}/readyz") as r:
                        if r.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError("gateway did not become ready")

    async def __aexit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(15)


async def run(n_questions: int, transports: bool = False) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench_gateway_"))
    speech = []
    for k, q in enumerate(QUESTIONS[:n_questions]):
        x, rate = synthesize(q, tmp / f"q{k}.wav")
        speech.append(soxr.resample(x, rate, RATE).astype(np.float32))
    async with ServiceProcess("stt") as stt, ServiceProcess("llm") as llm, ServiceProcess("tts") as tts:
        env = {"VOXGRID_ORCHESTRATOR_STT_BACKENDS": f"static:{stt.target}",
               "VOXGRID_ORCHESTRATOR_LLM_BACKENDS": f"static:{llm.target}",
               "VOXGRID_ORCHESTRATOR_TTS_BACKENDS": f"static:{tts.target}",
               "VOXGRID_ORCHESTRATOR_MAX_TOKENS": "30"}
        async with ServiceProcess("orchestrator", env) as orch, GatewayProcess(orch.target) as gw:
            if transports:
                await compare_transports(f"http://127.0.0.1:{gw.port}", speech)
                return
            async with channel(orch.target) as ch:
                stub = agent_pb2_grpc.AgentStub(ch)
                await ask_direct(stub, speech[0])  # warm-up (first-call compile/alloc costs)
                direct = [await ask_direct(stub, x) for x in speech]
            url = f"ws://127.0.0.1:{gw.port}/ws"
            via = [await ask_gateway(url, x) for x in speech]
    orch_v, edge_v, _ = zip(*via, strict=True)
    hop = [e - o for o, e, _ in via]
    print(f"\nvoice-to-voice, {len(speech)} spoken questions, one per call (ms; real local stack on CPU)\n")
    print(table(["path", "turns", "p50 at orchestrator", "p50 at gateway edge",
                 "hop p50 (edge - orchestrator, per turn)", "hop max"], [
        ["direct gRPC to the orchestrator", len(direct), pct(direct, 50), "-", "-", "-"],
        ["browser WebSocket via the gateway", len(via), pct(orch_v, 50), pct(edge_v, 50), pct(hop, 50), max(hop)],
    ]))


async def compare_transports(base_url: str, speech: list[np.ndarray]) -> None:
    ws_url = base_url.replace("http", "ws", 1) + "/ws"
    await ask_gateway(ws_url, speech[0])  # warm-up (first-call compile/alloc costs)
    await ask_webrtc(base_url, speech[0])
    rows: dict[str, list[tuple[float, float, float]]] = {"ws": [], "webrtc": []}
    for x in speech:  # alternate, so a load spike lands on both
        rows["ws"].append(await ask_gateway(ws_url, x))
        rows["webrtc"].append(await ask_webrtc(base_url, x))
    print(f"\nvoice-to-voice by browser transport, {len(speech)} spoken questions each, one per call "
          "(ms, p50 and max; real local stack on CPU)\n")
    names = {"ws": "WebSocket (PCM16 16 kHz)", "webrtc": "WebRTC (Opus 48 kHz, aiortc caller)"}
    out = []
    for key, got in rows.items():
        o, e, c = zip(*got, strict=True)
        hop = [b - a for a, b in zip(o, e, strict=True)]
        out.append([names[key], len(got), pct(o, 50), pct(e, 50), max(e), pct(hop, 50), max(hop), pct(c, 50),
                    max(c)])
    print(table(["transport", "turns", "p50 at orchestrator", "p50 at gateway edge", "edge max",
                 "hop p50 (edge - orchestrator, per turn)", "hop max", "p50 seen by the caller", "caller max"],
                out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--transports", action="store_true", help="WebSocket vs WebRTC instead of direct vs gateway")
    args = parser.parse_args()
    asyncio.run(run(args.questions, args.transports))


if __name__ == "__main__":
    main()
