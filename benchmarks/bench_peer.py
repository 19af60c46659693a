"""voxgrid beside the local Pipecat peer: the same wavs, the same prompt, one run, measured at the client.

    python benchmarks/bench_peer.py                      # builds the peer if missing (~7 min once), ~10 min
    python benchmarks/bench_peer.py --peer reuse         # the peer's last results in WORKDIR, voxgrid only
    python benchmarks/bench_peer.py --endpointing fixed --llm-engine vllm --set VOXGRID_LLM_DTYPE=bfloat16
    python benchmarks/bench_peer.py --naturalness        # also: first audio by time vs by characters, WER
    make bench-peer

The peer (../shared/peers/pipecat: Silero + smart-turn v3, whisper tiny.en, Qwen2.5 0.5B bf16 over a local
OpenAI-compatible server, Piper) runs its default configuration through its own `run.sh WORKDIR`, which
builds its venv and wavs once. Then voxgrid's local stack (`voxgrid up`: the processes of
bench_orchestrator.py's v2v mode) hears the SAME wavs (WORKDIR/audio/q1..q5.wav) with the peer's system
prompt, each question twice on a fresh session (plus one warm-up), in 20 ms frames at real-time pace.

Voice-to-voice, for both: first agent audio arrival minus the send time of the frame holding the last
speech sample (the last sample above -40 dBFS). The peer measures its own side the same way (push time
of that frame -> first reply audio written to its output). voxgrid's rows also give its per-stage record
(TurnLatency: endpoint wait, STT final, LLM first token, TTS first audio, speculative or not).

`--naturalness` adds a second orchestrator on the same backends with first audio by characters only
(`first_audio_after_ms` 0): both hear each question, and whisper tiny.en (the STT service's model, run
here offline) transcribes every reply's audio; WER of the reply text against that transcript says what
cutting the first phrase by time costs in intelligibility.

This machine is shared: quote the ratio, and the load average printed with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voxgrid.orchestrator.client import AgentCall, session_config

from benchmarks.common import ROOT, ServiceProcess, free_port, pct, table
from voxgrid.audio import AudioOut, read_wav
from voxgrid.client import channel
from voxgrid.v1 import agent_pb2, agent_pb2_grpc, stt_pb2

PEER_SRC = ROOT.parent / "shared" / "peers" / "pipecat"
FRAME_MS = 20
SPEECH_DBFS = -40.0
OFF_LANE = "voxgrid, fast preview off"  # --fast-preview both: the comparison lane
ENDPOINTING = {"fixed": stt_pb2.ENDPOINT_MODE_FIXED_SILENCE, "semantic": stt_pb2.ENDPOINT_MODE_SEMANTIC}


# --- the measurement ---------------------------------------------------------------------------------


def last_speech_frame(samples: np.ndarray, rate: int, frame_ms: int = FRAME_MS,
                      threshold_dbfs: float = SPEECH_DBFS) -> int:
    """Index of the `frame_ms` frame holding the last sample louder than `threshold_dbfs` (full scale 1.0,
    or 32768 for int16 input): voice-to-voice is measured from that frame's send time."""
    x = samples.astype(np.float32) / (32768.0 if samples.dtype == np.int16 else 1.0)
    loud = np.nonzero(np.abs(x) >= 10 ** (threshold_dbfs / 20))[0]
    if not loud.size:
        raise ValueError(f"no sample above {threshold_dbfs} dBFS: is this speech?")
    return int(loud[-1]) // (rate * frame_ms // 1000)


async def send_paced(call: AgentCall, samples: np.ndarray, rate: int, frame_ms: int = FRAME_MS) -> list[float]:
    """Send `samples` in `frame_ms` frames on an absolute real-time schedule; each frame's send time."""
    wire = AudioOut(rate, call.spec)
    step = rate * frame_ms // 1000
    t0 = time.monotonic()
    times = []
    for i in range(0, len(samples), step):
        frame = samples[i:i + step]
        if len(frame) < step:
            frame = np.concatenate([frame, np.zeros(step - len(frame), np.float32)])
        await asyncio.sleep(max(0.0, t0 + (i // step + 1) * frame_ms / 1000 - time.monotonic()))
        call.send_audio(wire.feed(frame))
        times.append(time.monotonic())
    return times


@dataclass
class Turn:
    question: int
    v2v_s: float | None
    transcript: str
    reply: str
    latency: object | None = None  # agent_pb2.TurnLatency
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


async def ask(stub: agent_pb2_grpc.AgentStub, config: object, question: int, samples: np.ndarray,
              rate: int) -> Turn:
    """One question on a fresh session; voice-to-voice as the client sees it."""
    async with AgentCall(stub, config) as call:
        await call.silence(0.5)
        times = await send_paced(call, samples, rate)
        t_last = times[last_speech_frame(samples, rate)]
        # The answer's turn id: 1, or later when a speculative answer was voided (ids are not reused).
        def answered(rec) -> bool:  # type: ignore[no-untyped-def]
            lats = rec.of("latency")
            return bool(lats) and call.turn_over(lats[0].turn_id)(rec)

        await call.silence(30, until=lambda: answered(call.record) or call.done.is_set())
        first = next((t for t, r in call.record.responses if r.WhichOneof("event") == "agent_audio"), None)
        lats = call.record.of("latency")
        tid = lats[0].turn_id if lats else 1
        return Turn(question, None if first is None else first - t_last, " ".join(call.record.finals()),
                    call.record.agent_text(tid), lats[0] if lats else None,
                    call.record.agent_audio(call.out_spec, tid))


# --- the two systems ------------------------------------------------------------------------------------


def run_peer(workdir: Path, src: Path) -> None:
    """The peer's default configuration through its own script (builds its venv and wavs when missing)."""
    if not (src / "run.sh").exists():
        raise SystemExit(f"no peer harness at {src}: pass --peer-src")
    print(f"peer: bash {src / 'run.sh'} {workdir}  (CONFIGS=default)", flush=True)
    results = workdir / "results" / "default.json"
    before = results.stat().st_mtime if results.exists() else 0.0
    subprocess.run(["bash", str(src / "run.sh"), str(workdir)], check=True,
                   env={**os.environ, "CONFIGS": "default"}, stdout=subprocess.DEVNULL)
    if not results.exists() or results.stat().st_mtime <= before:  # run.sh pipes the bench: its failure hides
        raise SystemExit(f"the peer wrote no new {results}: see {workdir}/results_default.log")


def peer_results(workdir: Path) -> list[float]:
    rows = json.loads((workdir / "results" / "default.json").read_text())
    return [r["v2v_out_s"] for r in rows if r["turn"] >= 0 and r["v2v_out_s"] is not None]


async def start_stack(args: argparse.Namespace, env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    base = free_port()
    cmd = [sys.executable, "-m", "voxgrid", "up", "--base-port", str(base), "--log-dir",
           str(ROOT / ".cache" / "bench-logs")]
    if args.llm_engine:
        cmd += ["--llm-engine", args.llm_engine]
    stack = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                             stdout=subprocess.PIPE, text=True)
    assert stack.stdout is not None
    while line := await asyncio.to_thread(stack.stdout.readline):
        if line.startswith("ready"):
            return stack, base
    raise RuntimeError("the local stack did not start (see .cache/bench-logs/)")


def session(args: argparse.Namespace, prompt: str) -> object:
    endpointing = stt_pb2.EndpointingConfig()
    if args.endpointing in ENDPOINTING:
        endpointing.mode = ENDPOINTING[args.endpointing]
    if args.min_silence_ms:
        endpointing.min_silence_ms = args.min_silence_ms
    if args.turn_min_wait_ms:
        endpointing.turn_min_wait_ms = args.turn_min_wait_ms
    if args.fast_preview in ("on", "off"):  # before session_config, which copies `endpointing`
        endpointing.fast_preview = args.fast_preview == "on"
    config = session_config(system_prompt=prompt, endpointing=endpointing)
    if args.max_tokens:
        config.sampling.max_tokens = args.max_tokens
    if args.greedy or args.naturalness:  # the same reply both ways: WER compares the speaking, not the words
        config.sampling.temperature = 0.0
    return config


async def run_voxgrid(args: argparse.Namespace, wavs: list[tuple[np.ndarray, int]],
                      prompt: str) -> dict[str, list[Turn]]:
    env = dict(kv.split("=", 1) for kv in args.set)
    stack, base = await start_stack(args, env)
    runs: dict[str, list[Turn]] = {"voxgrid": []}
    extra: ServiceProcess | None = None
    try:
        targets = {"voxgrid": f"127.0.0.1:{base}"}
        if args.naturalness:  # the same backends, first audio by characters only
            backends = {f"VOXGRID_ORCHESTRATOR_{s.upper()}_BACKENDS": f"static:127.0.0.1:{base + off}"
                        for s, off in (("stt", 10), ("llm", 11), ("tts", 12))}
            by_chars = {**env, **backends, "VOXGRID_ORCHESTRATOR_FIRST_AUDIO_AFTER_MS": "0"}
            extra = ServiceProcess("orchestrator", by_chars)
            await extra.__aenter__()
            targets["by characters"] = extra.target
            runs["by characters"] = []
        config = session(args, prompt)
        plan = [(-1, 0)] + [(k, k % len(wavs)) for k in range(len(wavs) * args.reps)]
        channels = {name: channel(target) for name, target in targets.items()}
        try:
            lanes = {name: (agent_pb2_grpc.AgentStub(ch), config) for name, ch in channels.items()}
            if args.fast_preview == "both":  # the same stack, sessions with and without STT's fast preview
                off, on = (type(config)(), type(config)())
                off.CopyFrom(config)
                on.CopyFrom(config)
                off.endpointing.fast_preview, on.endpointing.fast_preview = False, True
                lanes = {"voxgrid": (lanes["voxgrid"][0], on), OFF_LANE: (lanes["voxgrid"][0], off)}
                runs[OFF_LANE] = []
            for k, qi in plan:
                for name, (stub, lane_config) in lanes.items():  # interleaved: all see the same machine load
                    turn = await ask(stub, lane_config, qi, *wavs[qi])
                    print(f"  {name} q{qi + 1}{' (warm-up)' if k < 0 else ''}: {describe(turn)}", flush=True)
                    if k >= 0:
                        runs[name].append(turn)
        finally:
            for ch in channels.values():
                await ch.close()
    finally:
        if extra is not None:
            await extra.__aexit__()
        stack.terminate()
        await asyncio.to_thread(stack.wait, 60)
    return runs


def describe(turn: Turn) -> str:
    line = (f"v2v {'-' if turn.v2v_s is None else f'{turn.v2v_s:.3f}'} s  {turn.transcript!r} -> "
            f"{turn.reply[:70]!r}")
    lat = turn.latency
    if lat is not None:
        line += (f"  [endpoint {lat.endpoint_wait_ms:.0f}, stt {lat.stt_finalization_ms:.0f}, llm "
                 f"{lat.llm_time_to_first_token_ms:.0f}, tts {lat.tts_time_to_first_audio_ms:.0f} ms"
                 f"{', speculative' if lat.speculative else ''}]")
    return line


# --- the report ----------------------------------------------------------------------------------------


def breakdown(turns: list[Turn]) -> str:
    lats = [t.latency for t in turns if t.latency is not None]
    rows = []
    for label, name in (("endpoint wait", "endpoint_wait_ms"), ("STT final", "stt_finalization_ms"),
                        ("LLM first token", "llm_time_to_first_token_ms"),
                        ("TTS first audio", "tts_time_to_first_audio_ms"),
                        ("orchestration overhead", "orchestration_overhead_ms"),
                        ("voice-to-voice (server clock)", "voice_to_voice_ms")):
        v = [getattr(x, name) for x in lats]
        rows.append([label, pct(v, 50), pct(v, 90)])
    spec = sum(1 for x in lats if x.speculative)
    rows.append(["speculative turns", f"{spec} of {len(lats)}", ""])
    hits = sum(1 for x in lats if x.speculation == agent_pb2.SPECULATION_OUTCOME_HIT)
    misses = sum(1 for x in lats if x.speculation == agent_pb2.SPECULATION_OUTCOME_MISS)
    rows.append(["previews: hit / missed (final said other words)", f"{hits} / {misses}", ""])
    return table(["voxgrid stage", "p50 ms", "p90 ms"], rows)


def naturalness(runs: dict[str, list[Turn]]) -> str:
    from voxgrid.services.stt.engines.faster_whisper import FasterWhisperEngine

    from tests.stt.conftest import word_error_rate

    engine = FasterWhisperEngine("tiny.en-package")
    engine.load()
    rows = []
    for name, turns in runs.items():
        refs, hyps = [], []
        for t in turns:
            if t.reply and t.audio.size:
                segments, _ = engine.model.transcribe(t.audio, beam_size=5, language="en",
                                                      condition_on_previous_text=False)
                refs.append(t.reply)
                hyps.append(" ".join(s.text.strip() for s in segments))
                if word_error_rate(refs[-1], hyps[-1]):
                    print(f"  {name}: said {refs[-1]!r}, heard {hyps[-1]!r}")
        v = [t.v2v_s for t in turns if t.v2v_s is not None]
        rows.append([f"voxgrid, {'by characters' if name != 'voxgrid' else 'by time'}",
                     f"{100 * word_error_rate(' '.join(refs), ' '.join(hyps)):.1f} %", len(refs),
                     f"{statistics.median(v):.2f} s" if v else "-"])
    return table(["first audio", "WER (whisper tiny.en on the reply audio)", "replies", "v2v p50"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/peer"), help="the peer's build and results")
    ap.add_argument("--peer-src", type=Path, default=PEER_SRC, help="the peer harness (run.sh)")
    ap.add_argument("--peer", choices=("run", "reuse"), default="run",
                    help="run: the peer's default config now (builds it if missing); reuse: its last results")
    ap.add_argument("--reps", type=int, default=2, help="times each question is asked")
    ap.add_argument("--endpointing", choices=("server", "fixed", "semantic"), default="server",
                    help="STT end of turn for voxgrid's sessions (server: the STT replica's default)")
    ap.add_argument("--min-silence-ms", type=int, default=0, help="fixed mode's silence (0: the replica's)")
    ap.add_argument("--turn-min-wait-ms", type=int, default=0, help="semantic mode's short wait (0: the replica's)")
    ap.add_argument("--llm-engine", choices=("", "transformers", "vllm"), default="", help="as `voxgrid up`")
    ap.add_argument("--max-tokens", type=int, default=0, help="cap on reply tokens (0: the orchestrator's)")
    ap.add_argument("--set", action="append", default=[], metavar="ENV=VALUE",
                    help="settings for voxgrid's processes, e.g. VOXGRID_LLM_DTYPE=float32 (repeatable)")
    ap.add_argument("--naturalness", action="store_true",
                    help="also run first audio by characters on the same backends and compare WER of the replies "
                    "(implies --greedy)")
    ap.add_argument("--greedy", action="store_true", help="voxgrid's sessions sample greedily (temperature 0)")
    ap.add_argument("--fast-preview", choices=("server", "on", "off", "both"), default="server",
                    help="STT's fast preview for voxgrid's sessions (server: the replica's default; both: each "
                    "question on sessions with it on and with it off, interleaved, and both rows printed)")
    ap.add_argument("--questions", type=int, default=5, help="ask only the first N of the peer's five questions")
    args = ap.parse_args()
    load0 = os.getloadavg()
    if args.peer == "run" or not (args.workdir / "results" / "default.json").exists():
        run_peer(args.workdir, args.peer_src)
    peer = peer_results(args.workdir)
    prompt = (args.workdir / "system_prompt.txt").read_text().strip()
    wavs = []
    for i in range(1, min(args.questions, 5) + 1):
        x, rate = read_wav(args.workdir / "audio" / f"q{i}.wav")
        wavs.append((x, rate))
    runs = asyncio.run(run_voxgrid(args, wavs, prompt))
    env = dict(kv.split("=", 1) for kv in args.set)
    engine = args.llm_engine or os.environ.get("VOXGRID_LLM_ENGINE", "transformers")
    dtype = env.get("VOXGRID_LLM_DTYPE") or os.environ.get("VOXGRID_LLM_DTYPE") or (
        "float32" if engine == "transformers" else "engine default")
    preview = {"server": "fast preview: replica default", "both": "fast preview on"}.get(
        args.fast_preview, f"fast preview {args.fast_preview}")
    settings = ", ".join([f"endpointing {args.endpointing}", f"LLM {engine} {dtype}", preview,
                          *[kv for kv in args.set if not kv.startswith("VOXGRID_LLM_DTYPE=")]])
    print(f"\nvoice-to-voice at the client, {len(wavs)} flite questions x {args.reps}, real-time 20 ms frames, "
          f"peer's system prompt; load average {load0[0]:.1f} before, {os.getloadavg()[0]:.1f} after "
          f"({os.cpu_count()} cores)")

    def row(label: str, turns: list[Turn]) -> list[object]:
        v = [t.v2v_s for t in turns if t.v2v_s is not None]
        return [label, len(v), f"{pct(v, 50):.3f}", f"{pct(v, 90):.3f}",
                f"{pct(v, 50) / pct(peer, 50):.2f}x / {pct(v, 90) / pct(peer, 90):.2f}x"]

    rows = [["local Pipecat 1.14 peer (default settings)", len(peer), f"{pct(peer, 50):.3f}",
             f"{pct(peer, 90):.3f}", ""], row(f"voxgrid local stack ({settings})", runs["voxgrid"])]
    if OFF_LANE in runs:
        rows.append(row("voxgrid, the same stack, sessions with the fast preview off (interleaved)", runs[OFF_LANE]))
    print(table(["system", "turns", "p50 s", "p90 s", "ratio to the peer p50 / p90"], rows))
    print()
    print(breakdown(runs["voxgrid"]))
    if OFF_LANE in runs:
        print("\nthe same stack, sessions with the fast preview off:")
        print(breakdown(runs[OFF_LANE]))
    if args.naturalness:
        print()
        print(naturalness(runs))


if __name__ == "__main__":
    main()
