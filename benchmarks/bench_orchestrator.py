"""What the orchestrator costs and what a caller experiences.

  overhead  zero-latency STT/LLM/TTS fakes over real gRPC, the orchestrator alone on one core, N concurrent
            callers in real time: per-turn orchestration overhead (voice-to-voice minus every stage) p50/p99,
            and what the orchestrator adds measured inside it, so a starved load side cannot blur it:
            event-loop lag, backend message -> client message per hop (its /metrics histograms), and
            its CPU per session-second (-> sessions per core). Callers and fakes run in other processes.
  v2v       the real local stack (small CPU models): voice-to-voice p50/p95 and its breakdown by stage over
            spoken questions, and barge-in reaction (caller starts talking over the agent -> agent audio stops).
  neighbour the real local stack: a good caller's voice-to-voice alone and while a neighbour's largest allowed
            typed turn is read by the same LLM replica, per prefill chunk size (beside others / alone).
  control   zero-latency fakes, one call: what live control adds. `update` request -> `updated` ack, `say`
            request -> its first audio (typed text -> first audio through the LLM fake for comparison), p50/p99.

    python benchmarks/bench_orchestrator.py overhead [--sessions 1,50,200] [--turns 3]
    python benchmarks/bench_orchestrator.py v2v [--questions 8] [--barge-ins 4]
    python benchmarks/bench_orchestrator.py neighbour [--chunks 512/512,16/128] [--pairs 3]
    python benchmarks/bench_orchestrator.py control [--n 200]
    python benchmarks/bench_orchestrator.py hybrid [--questions 6] [--max-tokens 16]

  hybrid    the same spoken questions, in the same run, answered by pipeline mode (speculation off and on) and by
            hybrid mode: real STT (tiny.en), the tiny random-weight Qwen2-Audio on the transformers engine (it
            reads text and hears audio, so one replica serves all modes), Piper TTS, in-process on loopback. Per
            turn: the stages on the critical path and what leaving STT finalisation out saves.
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


HOPS = ("stt->user_transcript", "llm->agent_text", "tts->agent_audio")


async def caller(stub: agent_pb2_grpc.AgentStub, turns: int, start_delay: float, out: list,
                 spans: list[float] | None = None) -> None:
    await asyncio.sleep(start_delay)
    started = time.monotonic()
    async with AgentCall(stub, session_config()) as call:
        for turn in range(1, turns + 1):
            await call.stream(tone(0.8), RATE)
            await call.silence(20, until=lambda t=turn: call.turn_over(t)(call.record) or call.done.is_set())
        out.extend(call.record.of("latency"))
        if call.error:
            out.append(call.error)
    if spans is not None:
        spans.append(time.monotonic() - started)


def scrape(port: int) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """The orchestrator's fine-grained histograms: (name, hop) -> cumulative (upper bound, count) buckets."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "voxgrid_orchestrator_usage_audio_seconds":  # caller audio the sessions really got
            out[("caller_audio_s", "")] = [(0.0, sum(s.value for s in family.samples if s.name.endswith("_total")
                                                     and s.labels.get("kind") == "caller"))]
        if family.name not in ("voxgrid_orchestrator_event_loop_lag_seconds", "voxgrid_orchestrator_hop_seconds"):
            continue
        for s in family.samples:
            if s.name.endswith("_bucket"):
                out.setdefault((family.name, s.labels.get("hop", "")), []).append((float(s.labels["le"]), s.value))
    return out


def quantile_ms(before: dict, after: dict, key: tuple[str, str], q: float) -> str:
    """q-quantile (upper bucket bound) of what a histogram gained between two scrapes, ms."""
    old = dict(before.get(key, []))
    buckets = [(le, n - old.get(le, 0.0)) for le, n in sorted(after.get(key, []))]
    if not buckets or buckets[-1][1] <= 0:
        return "-"
    target = q * buckets[-1][1]
    le = next(le for le, n in buckets if n >= target)
    return "> 1000" if le == float("inf") else f"{1000 * le:g}"


async def overhead(sessions: list[int], turns: int) -> None:
    ports = [free_port() for _ in range(3)]
    fakes = subprocess.Popen([sys.executable, "-m", "tests.orchestrator.fakes", *map(str, ports)],
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE)
    fakes.stdout.readline()  # addresses: ready
    env = {"VOXGRID_ORCHESTRATOR_STT_BACKENDS": f"static:127.0.0.1:{ports[0]}",
           "VOXGRID_ORCHESTRATOR_LLM_BACKENDS": f"static:127.0.0.1:{ports[1]}",
           "VOXGRID_ORCHESTRATOR_TTS_BACKENDS": f"static:127.0.0.1:{ports[2]}",
           "VOXGRID_ORCHESTRATOR_MAX_SESSIONS": "1000"}
    rows: list[list[object]] = []
    inside: list[list[object]] = []
    try:
        async with ServiceProcess("orchestrator", env) as orch:
            os.sched_setaffinity(orch.proc.pid, {0})  # the orchestrator gets one core
            os.sched_setaffinity(fakes.pid, {1})
            os.sched_setaffinity(0, {1})
            async with channel(orch.target) as ch:
                stub = agent_pb2_grpc.AgentStub(ch)
                for n in sessions:
                    results: list = []
                    before = scrape(orch.metrics_port)
                    cpu0, t0 = cpu_seconds(orch.proc.pid), time.monotonic()
                    spans: list[float] = []
                    await asyncio.gather(*(caller(stub, turns, 1.0 * i / max(1, n), results, spans)
                                           for i in range(n)))
                    wall = time.monotonic() - t0
                    cpu_s = cpu_seconds(orch.proc.pid) - cpu0
                    cpu = cpu_s / wall
                    await asyncio.sleep(1.0)  # sessions add their usage (caller audio) as they end
                    after = scrape(orch.metrics_port)
                    # CPU ms per session-second: per second of caller audio the sessions received (a starved
                    # load side sends less than real time), else per second a caller was connected.
                    audio_s = (after.get(("caller_audio_s", ""), [(0, 0.0)])[0][1]
                               - before.get(("caller_audio_s", ""), [(0, 0.0)])[0][1])
                    per_session_s = 1000 * cpu_s / max(audio_s if audio_s > 0 else sum(spans), 1e-9)
                    lats = [r for r in results if not isinstance(r, Exception)]
                    errors = len(results) - len(lats)
                    ov = [x.orchestration_overhead_ms for x in lats]
                    v2v = [x.voice_to_voice_ms - x.endpoint_wait_ms for x in lats]
                    rows.append([n, len(lats), errors, pct(ov, 50), pct(ov, 99), pct(v2v, 50), pct(v2v, 99),
                                 f"{100 * cpu:.0f}%"])
                    lag = ("voxgrid_orchestrator_event_loop_lag_seconds", "")
                    hops = [("voxgrid_orchestrator_hop_seconds", h) for h in HOPS]
                    inside.append([n, quantile_ms(before, after, lag, 0.5), quantile_ms(before, after, lag, 0.99),
                                   *[f"{quantile_ms(before, after, h, 0.5)} / {quantile_ms(before, after, h, 0.99)}"
                                     for h in hops],
                                   f"{per_session_s:.1f}", f"{1000 / per_session_s:.0f}"])
    finally:
        fakes.terminate()
    print(f"\norchestration overhead, zero-latency backends over loopback gRPC, orchestrator pinned to one core, "
          f"{turns} turns per caller, 20 ms frames in real time")
    print(table(["callers", "turns", "errors", "overhead p50 ms", "overhead p99 ms",
                 "endpoint->audio p50 ms", "endpoint->audio p99 ms", "orchestrator CPU"], rows))
    print("\nwhat the orchestrator adds, measured inside it (its /metrics; histogram bucket bounds, ms)")
    print(table(["callers", "event-loop lag p50", "event-loop lag p99",
                 *[f"{h} p50 / p99" for h in HOPS], "CPU ms per session-second", "sessions per core"], inside))


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


async def control(n: int) -> None:
    ports = [free_port() for _ in range(3)]
    fakes = subprocess.Popen([sys.executable, "-m", "tests.orchestrator.fakes", *map(str, ports)],
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE)
    fakes.stdout.readline()  # addresses: ready
    env = {"VOXGRID_ORCHESTRATOR_STT_BACKENDS": f"static:127.0.0.1:{ports[0]}",
           "VOXGRID_ORCHESTRATOR_LLM_BACKENDS": f"static:127.0.0.1:{ports[1]}",
           "VOXGRID_ORCHESTRATOR_TTS_BACKENDS": f"static:127.0.0.1:{ports[2]}",
           "VOXGRID_ORCHESTRATOR_CONTROL_PER_S": "10000", "VOXGRID_ORCHESTRATOR_CONTROL_BURST": "10000",
           "VOXGRID_ORCHESTRATOR_MAX_HISTORY_TOKENS": "100000"}
    times: dict[str, list[float]] = {"update -> updated": [], "say -> first audio": [],
                                     "typed text -> first audio (LLM fake)": []}
    try:
        async with ServiceProcess("orchestrator", env) as orch, channel(orch.target) as ch:
            async with AgentCall(agent_pb2_grpc.AgentStub(ch), session_config()) as call:
                await call.wait_started()
                for i in range(n):
                    acks = len(call.record.of("updated"))
                    t0 = time.monotonic()
                    call.update(agent_pb2.SessionConfig(system_prompt=f"Persona {i}."), "system_prompt")
                    await call.wait_for(lambda r, k=acks: len(r.of("updated")) > k)
                    times["update -> updated"].append(1000 * (call.record.responses[-1][0] - t0))
                turn = 0
                for i in range(max(1, n // 4)):
                    for kind in ("say -> first audio", "typed text -> first audio (LLM fake)"):
                        turn += 1
                        t0 = time.monotonic()
                        if kind.startswith("say"):
                            call.say(f"Please hold, number {i}.")
                        else:
                            call.send(agent_pb2.ConverseRequest(text=f"question {i}"))
                        await call.wait_for(lambda r, t=turn: any(a.turn_id == t for a in r.of("agent_audio")))
                        first = next(at for at, r in call.record.responses
                                     if r.WhichOneof("event") == "agent_audio" and r.agent_audio.turn_id == turn)
                        times[kind].append(1000 * (first - t0))
                        call.interrupt()
                        await call.wait_for(call.turn_over(turn))
                if call.error is not None or call.record.of("notice"):
                    raise SystemExit(f"control run failed: {call.error} {call.record.of('notice')}")
    finally:
        fakes.terminate()
    print("\nlive control on zero-latency fakes over loopback gRPC, one call, client send -> client receive")
    print(table(["what", "n", "p50 ms", "p99 ms"], [[k, len(v), pct(v, 50), pct(v, 99)] for k, v in times.items()]))


MODES = {"pipeline": (agent_pb2.AGENT_MODE_PIPELINE, False),
         "pipeline+speculative": (agent_pb2.AGENT_MODE_PIPELINE, True),
         "hybrid": (agent_pb2.AGENT_MODE_HYBRID, False)}


async def hybrid(n_questions: int, max_tokens: int) -> None:
    import contextlib

    from voxgrid.orchestrator.app import AgentRuntime
    from voxgrid.orchestrator.settings import Settings as OrchestratorSettings
    from voxgrid.services.llm.app import LlmRuntime, LlmSettings
    from voxgrid.services.llm.assets import TINY_QWEN2_AUDIO
    from voxgrid.services.stt.app import SttRuntime, SttSettings
    from voxgrid.services.tts.app import TtsRuntime, TtsSettings

    from voxgrid.server.chassis import start_server

    with tempfile.TemporaryDirectory() as tmp:
        speech = [flite(q, Path(tmp) / f"q{i}.wav") for i, q in enumerate(QUESTIONS[:n_questions])]
    greedy = audio_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens)
    lats: dict[str, list[agent_pb2.TurnLatency]] = {m: [] for m in MODES}
    async with contextlib.AsyncExitStack() as stack:
        backends = {}
        for name, runtime_cls, settings in (
                ("stt", SttRuntime, SttSettings(port=0)),
                ("llm", LlmRuntime, LlmSettings(host="127.0.0.1", port=0, metrics_port=0, model=TINY_QWEN2_AUDIO,
                                                dtype="float32", max_model_len=2048)),
                ("tts", TtsRuntime, TtsSettings(port=0))):
            backends[name] = await stack.enter_async_context(start_server(runtime_cls(settings), settings))
        stubs = {}
        for mode, (_, speculative) in MODES.items():
            settings = OrchestratorSettings(port=0, speculative_turns=speculative,
                                            **{f"{n}_backends": s.address for n, s in backends.items()})
            orch = await stack.enter_async_context(start_server(AgentRuntime(settings), settings))
            stubs[mode] = agent_pb2_grpc.AgentStub(await stack.enter_async_context(channel(orch.address)))

        async def turn(mode: str, x: np.ndarray) -> agent_pb2.TurnLatency | None:
            config = session_config(mode=MODES[mode][0], sampling=greedy)
            async with AgentCall(stubs[mode], config) as call:
                await call.stream(x, RATE)
                await call.silence(60, until=lambda: call.turn_over(1)(call.record) or call.done.is_set())
                if call.error is not None:
                    raise RuntimeError(f"{mode}: {call.error.details()}")
                got = call.record.of("latency")
                return got[0] if got else None

        for mode in MODES:  # warm-up: model caches, first-call costs
            await turn(mode, speech[0])
        for i, x in enumerate(speech):  # interleaved, so load drifts hit every mode alike
            for mode in MODES:
                lat = await turn(mode, x)
                if lat is not None:
                    lats[mode].append(lat)
            print(f"  q{i}: " + ", ".join(f"{m} {lats[m][-1].voice_to_voice_ms:.0f} ms" for m in MODES if lats[m]),
                  flush=True)
    stage = {agent_pb2.TURN_STAGE_ENDPOINT: "endpoint", agent_pb2.TURN_STAGE_STT_FINALIZATION: "stt",
             agent_pb2.TURN_STAGE_LLM: "llm", agent_pb2.TURN_STAGE_TOOLS: "tools", agent_pb2.TURN_STAGE_TTS: "tts"}
    rows = []
    for mode, got in lats.items():
        f = lambda name, g=got: [getattr(x, name) for x in g]  # noqa: E731
        to_token = [x.endpoint_wait_ms + x.stt_finalization_ms + x.llm_time_to_first_token_ms for x in got]
        paths = {" > ".join(stage[s] for s in x.critical_path) for x in got}
        transcript = [x.transcript_ms for x in got if x.HasField("transcript_ms")]
        rows.append([mode, len(got), pct(f("voice_to_voice_ms"), 50), pct(f("endpoint_wait_ms"), 50),
                     pct(f("stt_finalization_ms"), 50), pct(f("llm_time_to_first_token_ms"), 50), pct(to_token, 50),
                     pct(f("tts_time_to_first_audio_ms"), 50), pct(transcript, 50) if transcript else "-",
                     " | ".join(sorted(paths))])
    print(f"\nper-turn critical path, pipeline vs hybrid: the same {len(speech)} flite questions in one run, p50 ms "
          f"(tiny random-weight Qwen2-Audio: 2+2 layers, width 64, {max_tokens} greedy tokens: its text layers cost "
          "almost nothing, so hybrid's LLM TTFT is mostly the audio path: features and encoder over one padded 30 s "
          "window; STT tiny.en, Piper TTS; TTS first audio differs by mode because the random model's text does)")
    print(table(["mode", "turns", "voice-to-voice", "endpoint wait", "STT final (on path)", "LLM TTFT",
                 "speech end -> 1st token", "TTS first audio", "transcript (off path)", "critical path"], rows))


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
    p = sub.add_parser("hybrid")
    p.add_argument("--questions", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=16)
    p = sub.add_parser("control")
    p.add_argument("--n", type=int, default=200, help="updates timed (and n/4 says and typed turns)")
    args = parser.parse_args()
    if args.what == "overhead":
        asyncio.run(overhead([int(s) for s in args.sessions.split(",")], args.turns))
    elif args.what == "hybrid":
        asyncio.run(hybrid(args.questions, args.max_tokens))
    elif args.what == "control":
        asyncio.run(control(args.n))
    elif args.what == "neighbour":
        pairs = [spec.split("/") for spec in args.chunks.split(",")]
        asyncio.run(neighbour([(int(c), int(s)) for c, s in pairs], args.pairs, args.settle_s))
    else:
        asyncio.run(v2v(args.questions, args.barge_ins))


if __name__ == "__main__":
    main()
