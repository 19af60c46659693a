"""What the orchestrator costs and what a caller experiences.

  overhead  zero-latency STT/LLM/TTS fakes over real gRPC, the orchestrator alone on one core, N concurrent
            callers in real time: per-turn orchestration overhead (voice-to-voice minus every stage) p50/p99.
  v2v       the real local stack (small CPU models): voice-to-voice p50/p95 and its breakdown by stage over
            spoken questions, and barge-in reaction (caller starts talking over the agent -> agent audio stops).
  neighbour the real local stack: a good caller's voice-to-voice alone and while a neighbour's largest allowed
            typed turn is read by the same LLM replica, per prefill chunk size (beside others / alone).

    python benchmarks/bench_orchestrator.py overhead [--sessions 1,50,200] [--turns 3]
    python benchmarks/bench_orchestrator.py v2v [--questions 8] [--barge-ins 4]
    python benchmarks/bench_orchestrator.py neighbour [--chunks 512/512,16/128] [--pairs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voxgrid.orchestrator.client import TE, AgentCall, session_config

from benchmarks.common import ROOT, ServiceProcess, cpu_seconds, free_port, pct, table
from voxgrid.client import channel
from voxgrid.speech import synthesize
from voxgrid.v1 import agent_pb2, agent_pb2_grpc, audio_pb2

RATE = 16000
QUESTIONS = [
    "What is the capital of France?",
    "How many days are there in a week?",
    "Can you recommend a good book?",
    "What is the weather usually like in spring?",
    "Tell me something about the moon.",
    "How do I boil an egg?",
    "What time zone is London in?",
    "Why is the sky blue?",
]


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


async def caller(stub: agent_pb2_grpc.AgentStub, turns: int, start_delay: float, out: list) -> None:
    await asyncio.sleep(start_delay)
    async with AgentCall(stub, session_config()) as call:
        for turn in range(1, turns + 1):
            await call.stream(tone(0.8), RATE)
            await call.silence(20, until=lambda t=turn: call.turn_over(t)(call.record) or call.done.is_set())
        out.extend(call.record.of("latency"))
        if call.error:
            out.append(call.error)


async def overhead(sessions: list[int], turns: int) -> None:
    ports = [free_port() for _ in range(3)]
    fakes = subprocess.Popen([sys.executable, "-m", "tests.orchestrator.fakes", *map(str, ports)],
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE)
    fakes.stdout.readline()  # addresses: ready
    env = {"VOXGRID_ORCHESTRATOR_STT_BACKENDS": f"static:127.0.0.1:{ports[0]}",
           "VOXGRID_ORCHESTRATOR_LLM_BACKENDS": f"static:127.0.0.1:{ports[1]}",
           "VOXGRID_ORCHESTRATOR_TTS_BACKENDS": f"static:127.0.0.1:{ports[2]}",
           "VOXGRID_ORCHESTRATOR_MAX_SESSIONS": "1000"}
    rows = []
    try:
        async with ServiceProcess("orchestrator", env) as orch:
            os.sched_setaffinity(orch.proc.pid, {0})  # the orchestrator gets one core
            os.sched_setaffinity(fakes.pid, {1})
            os.sched_setaffinity(0, {1})
            async with channel(orch.target) as ch:
                stub = agent_pb2_grpc.AgentStub(ch)
                for n in sessions:
                    results: list = []
                    cpu0, t0 = cpu_seconds(orch.proc.pid), time.monotonic()
                    await asyncio.gather(*(caller(stub, turns, 1.0 * i / max(1, n), results) for i in range(n)))
                    cpu = (cpu_seconds(orch.proc.pid) - cpu0) / (time.monotonic() - t0)
                    lats = [r for r in results if not isinstance(r, Exception)]
                    errors = len(results) - len(lats)
                    ov = [x.orchestration_overhead_ms for x in lats]
                    v2v = [x.voice_to_voice_ms - x.endpoint_wait_ms for x in lats]
                    rows.append([n, len(lats), errors, pct(ov, 50), pct(ov, 99), pct(v2v, 50), pct(v2v, 99),
                                 f"{100 * cpu:.0f}%"])
    finally:
        fakes.terminate()
    print(f"\norchestration overhead, zero-latency backends over loopback gRPC, orchestrator pinned to one core, "
          f"{turns} turns per caller, 20 ms frames in real time")
    print(table(["callers", "turns", "errors", "overhead p50 ms", "overhead p99 ms",
                 "endpoint->audio p50 ms", "endpoint->audio p99 ms", "orchestrator CPU"], rows))


def flite(text: str, path: Path) -> np.ndarray:
    x, rate = synthesize(text, path)
    return soxr.resample(x, rate, RATE).astype(np.float32)


async def v2v(n_questions: int, n_barge: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        speech = [flite(q, Path(tmp) / f"q{i}.wav") for i, q in enumerate(QUESTIONS[:n_questions])]
        interrupt = flite("Sorry, stop, let me ask something else.", Path(tmp) / "stop.wav")
        story_request = flite("Tell me a story about a dragon.", Path(tmp) / "story.wav")
    base = free_port()
    logs = str(ROOT / ".cache" / "bench-logs")
    stack = subprocess.Popen([sys.executable, "-m", "voxgrid", "up", "--base-port", str(base), "--log-dir", logs],
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        for line in stack.stdout:
            if line.startswith("ready"):
                break
            if stack.poll() is not None:
                raise RuntimeError("the local stack did not start")
        target = f"127.0.0.1:{base}"
        lats = []
        reactions = []
        async with channel(target) as ch:
            stub = agent_pb2_grpc.AgentStub(ch)
            for i, x in enumerate(speech):
                async with AgentCall(stub, session_config()) as call:
                    await call.stream(x, RATE)
                    await call.silence(60, until=lambda c=call: c.turn_over(1)(c.record) or c.done.is_set())
                    lats += call.record.of("latency")
                    print(f"  q{i}: {' '.join(call.record.finals())!r} -> {call.record.agent_text()[:60]!r}...",
                          flush=True)
            story = audio_pb2.SamplingParams(max_tokens=200)
            teller = "You are a storyteller: answer with a long story."
            for _ in range(n_barge):
                config = session_config(sampling=story, system_prompt=teller)
                async with AgentCall(stub, config) as call:
                    await call.stream(story_request, RATE)
                    await call.silence(60, until=lambda c=call: bool(c.record.events(TE.KIND_AGENT_STARTED_SPEAKING)))
                    await call.silence(1.0)
                    t_speech = time.monotonic()
                    stop = asyncio.Event()
                    sender = asyncio.create_task(call.stream(interrupt, RATE, stop=stop))
                    await call.wait_for(lambda r: bool(r.events(TE.KIND_INTERRUPTED)), 30)
                    t_cut = next(t for t, r in call.record.responses if r.WhichOneof("event") == "turn_event"
                                 and r.turn_event.kind == TE.KIND_INTERRUPTED)
                    t_last = max(t for t, r in call.record.responses
                                 if r.WhichOneof("event") == "agent_audio" and r.agent_audio.turn_id == 1)
                    reactions.append((1000 * max(0.0, t_last - t_speech), 1000 * (t_cut - t_speech)))
                    stop.set()
                    await sender
    finally:
        stack.terminate()
        stack.wait(30)
    f = lambda name: [getattr(x, name) for x in lats]  # noqa: E731
    rows = [[name.replace("_ms", ""), pct(f(name), 50), pct(f(name), 95)] for name in (
        "voice_to_voice_ms", "endpoint_wait_ms", "stt_finalization_ms", "llm_time_to_first_token_ms",
        "tts_time_to_first_audio_ms", "orchestration_overhead_ms")]
    print(f"\nvoice-to-voice on the local CPU stack ({len(lats)} spoken questions, flite speech, 16 kHz PCM)")
    print(table(["stage", "p50 ms", "p95 ms"], rows))
    if reactions:
        stopped, announced = [r[0] for r in reactions], [r[1] for r in reactions]
        print(f"\nbarge-in: caller starts talking over the agent ({len(reactions)} tries), measured at the client")
        print(table(["from caller speech start to", "p50 ms", "p95 ms"], [
            ["last agent audio received", pct(stopped, 50), pct(stopped, 95)],
            ["INTERRUPTED event (history trimmed)", pct(announced, 50), pct(announced, 95)]]))


NEIGHBOUR_TEXT = ("Here is my whole order history; read it carefully before you answer. "
                  + " ".join(f"Order {i}: two boxes of blue tiles, delivered on a Monday." for i in range(70)))[:4000]


async def good_turn(stub: agent_pb2_grpc.AgentStub, speech: np.ndarray, neighbour: bool) -> float:
    """One spoken question on a fresh session; the neighbour's typed turn lands as the caller falls silent."""
    async with AgentCall(stub, session_config()) as good, AgentCall(stub, session_config()) as other:
        await good.stream(speech, RATE)
        if neighbour:
            other.send(agent_pb2.ConverseRequest(text=NEIGHBOUR_TEXT))
        await good.silence(60, until=lambda: good.turn_over(1)(good.record) or good.done.is_set())
        if other.record.of("notice"):
            raise RuntimeError(f"the neighbour's turn was refused: {other.record.of('notice')[0].message}")
        return good.record.of("latency")[0].voice_to_voice_ms


async def neighbour(chunks: list[tuple[int, int]], pairs: int, settle_s: float) -> None:
    from voxgrid.loadtest.scenarios.stack import Stack

    with tempfile.TemporaryDirectory() as tmp:
        speech = flite("What is the capital of France?", Path(tmp) / "q.wav")
    rows = []
    for chunk, solo in chunks:
        env = {"VOXGRID_LLM_PREFILL_CHUNK_TOKENS": str(chunk), "VOXGRID_LLM_PREFILL_SOLO_CHUNK_TOKENS": str(solo)}
        async with Stack(backend_env=env) as stack:
            async with channel(stack.orchestrator.target) as ch:
                stub = agent_pb2_grpc.AgentStub(ch)
                await good_turn(stub, speech, neighbour=False)  # warm-up
                alone, beside = [], []
                for _ in range(pairs):
                    # The neighbour of the last pair has hung up, but the LLM step in flight for it (one
                    # prefill chunk) still runs: let it end, so "alone" means alone.
                    await asyncio.sleep(settle_s)
                    alone.append(await good_turn(stub, speech, neighbour=False))
                    beside.append(await good_turn(stub, speech, neighbour=True))
                    print(f"  chunk {chunk}: alone {alone[-1]:.0f} ms, beside {beside[-1]:.0f} ms", flush=True)
        rows.append([f"{chunk or 'whole prompt'} / {solo or 'whole prompt'}", pct(alone, 50), pct(beside, 50),
                     f"{pct(beside, 50) / pct(alone, 50):.2f}x"])
    print(f"\na good caller's voice-to-voice (p50 of {pairs}), alone and while a neighbour's "
          f"{len(NEIGHBOUR_TEXT)}-character typed turn is read by the same LLM replica (real CPU stack, Qwen2.5 0.5B)")
    print(table(["LLM prefill chunk, beside others / alone (tokens)", "alone ms", "beside the neighbour ms",
                 "factor"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("overhead")
    p.add_argument("--sessions", default="1,50,200")
    p.add_argument("--turns", type=int, default=3)
    p = sub.add_parser("v2v")
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--barge-ins", type=int, default=4)
    p = sub.add_parser("neighbour")
    p.add_argument("--chunks", default="512/512,16/128",
                   help="LLM prefill chunk sizes to compare, as beside-others/alone tokens (0 = the whole prompt); "
                   "512/512 is the engine before chunks followed contention, 16/128 today's defaults")
    p.add_argument("--pairs", type=int, default=3, help="alone/beside question pairs per value")
    p.add_argument("--settle-s", type=float, default=5.0, help="pause before each lone question")
    args = parser.parse_args()
    if args.what == "overhead":
        asyncio.run(overhead([int(s) for s in args.sessions.split(",")], args.turns))
    elif args.what == "neighbour":
        pairs = [spec.split("/") for spec in args.chunks.split(",")]
        asyncio.run(neighbour([(int(c), int(s)) for c, s in pairs], args.pairs, args.settle_s))
    else:
        asyncio.run(v2v(args.questions, args.barge_ins))


if __name__ == "__main__":
    main()
