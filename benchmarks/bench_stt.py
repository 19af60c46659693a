"""STT benchmark: streaming vs offline WER, finalization delay, RTF, concurrent real-time sessions.

    python benchmarks/bench_stt.py                       # CPU default: tiny.en int8, ~40 telephone prompts
    python benchmarks/bench_stt.py --model large-v3 --device cuda --compute-type float16 --window-quantum-s 30
    make bench-gpu    # on a GPU: float16, sessions per GPU whose finalization p95 stays under 100 ms

Audio: the recorded 8 kHz Asterisk telephone prompts (Debian asterisk-core-sounds-en-wav), streamed as
mu-law at real-time pace through a loopback gRPC server. Offline baseline: faster-whisper `transcribe()`
of the same files with the same model. Finalization delay = `Transcript.latency_ms` of finals (end of
speech seen by VAD → final leaving the server) and, client side, speech_ended arrival → final arrival.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from voxgrid.services.stt.app import SttRuntime
from voxgrid.services.stt.client import audio_chunks, recognize
from voxgrid.services.stt.engines.faster_whisper import FasterWhisperEngine
from voxgrid.services.stt.scheduler import BatchStats
from voxgrid.services.stt.settings import SttSettings

from tests.stt.conftest import ASTERISK_DIR, asterisk_prompts, word_error_rate
from voxgrid.audio import MULAW, AudioSpec, read_wav
from voxgrid.client import channel
from voxgrid.server.chassis import start_server
from voxgrid.v1 import stt_pb2, stt_pb2_grpc

SPEC = AudioSpec(MULAW, 8000)


def pick_prompts(n: int) -> list[tuple[str, str, np.ndarray]]:
    prompts = {k: v for k, v in asterisk_prompts().items() if len(v.split()) >= 3}
    names = sorted(prompts)
    step = max(1, len(names) // n)
    out = []
    for name in names[::step][:n]:
        audio, rate = read_wav(ASTERISK_DIR / f"{name}.wav")
        if rate == 8000:
            out.append((name, prompts[name], audio))
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def offline(engine: FasterWhisperEngine, prompts: list[tuple[str, str, np.ndarray]], beam: int) -> tuple[float, float]:
    from voxgrid.audio import StreamResampler

    refs, hyps, busy, audio_s = [], [], 0.0, 0.0
    for _, ref, audio in prompts:
        x = StreamResampler(8000, 16000).process(audio, last=True)
        t = time.perf_counter()
        segments, _ = engine.model.transcribe(x, beam_size=beam, language="en")
        hyps.append(" ".join(s.text.strip() for s in segments))
        busy += time.perf_counter() - t
        audio_s += len(audio) / 8000
        refs.append(ref)
    return word_error_rate(" ".join(refs), " ".join(hyps)), busy / audio_s


async def stream_many(address: str, items: list[np.ndarray], interim: bool) -> list:
    async with channel(address) as ch:
        stub = stt_pb2_grpc.SpeechToTextStub(ch)
        cfg = stt_pb2.RecognitionConfig(format=SPEC.to_proto(), interim_results=interim)
        pad = np.zeros(4000, np.float32)
        return await asyncio.gather(*(
            recognize(stub, cfg, audio_chunks(np.concatenate([pad, a, pad, pad]), SPEC)) for a in items))


def delays(results: list) -> tuple[list[float], list[float]]:
    server, client = [], []
    for r in results:
        ended_at: dict[int, float] = {}
        for item in r.received:
            resp = item.response
            if resp.WhichOneof("result") == "speech_event" and resp.speech_event.kind == 2:
                ended_at[resp.speech_event.utterance_id] = item.at
            elif resp.WhichOneof("result") == "transcript" and resp.transcript.is_final:
                server.append(resp.transcript.latency_ms)
                if resp.transcript.utterance_id in ended_at:
                    client.append(1000 * (item.at - ended_at[resp.transcript.utterance_id]))
    return server, client


async def main(args: argparse.Namespace) -> None:
    prompts = pick_prompts(args.prompts)
    if not prompts:
        sys.exit("no telephone prompts: apt-get install asterisk-core-sounds-en-wav")
    settings = SttSettings(
        host="127.0.0.1", port=0, max_sessions=256, model=args.model, device=args.device,
        compute_type=args.compute_type, window_quantum_s=args.window_quantum_s,
        final_window_quantum_s=args.final_window_quantum_s, beam_size=args.beam_size,
        max_batch_size=args.max_batch_size, cpu_threads=args.cpu_threads,
    )
    engine = FasterWhisperEngine(
        settings.model, device=settings.device, compute_type=settings.compute_type, cpu_threads=settings.cpu_threads,
        beam_size=settings.beam_size, window_quantum_s=settings.window_quantum_s,
        final_window_quantum_s=settings.final_window_quantum_s,
    )
    engine.load()
    total_audio = sum(len(p[2]) for p in prompts) / 8000
    print(f"model {args.model} on {args.device}/{args.compute_type}, window quantum {args.window_quantum_s} s; "
          f"{len(prompts)} prompts, {total_audio:.0f} s of 8 kHz telephone speech", flush=True)
    wer_off, rtf_off = offline(engine, prompts, args.beam_size)

    runtime = SttRuntime(settings, engine=engine)
    busy = {"s": 0.0, "batches": 0, "rows": 0}

    def on_batch(stats: BatchStats) -> None:
        busy["s"] += stats.decode_s
        busy["batches"] += 1
        busy["rows"] += stats.size

    runtime.scheduler.batch_listeners.append(on_batch)
    rows: list[tuple[str, ...]] = []
    async with start_server(runtime, settings) as srv:
        # 1) Accuracy + delay: every prompt streamed in real time, `--parallel` at once, with partials.
        t0 = time.perf_counter()
        results = []
        for i in range(0, len(prompts), args.parallel):
            results += await stream_many(srv.address, [p[2] for p in prompts[i : i + args.parallel]], True)
        wall = time.perf_counter() - t0
        refs = " ".join(p[1] for p in prompts)
        wer_stream = word_error_rate(refs, " ".join(r.text for r in results))
        server_ms, client_ms = delays(results)
        rtf_stream = busy["s"] / total_audio
        print(f"(streamed {total_audio:.0f} s in {wall:.0f} s, {busy['batches']} batches, "
              f"mean batch {busy['rows'] / max(busy['batches'], 1):.1f})", flush=True)
        rows += [
            (f"WER offline transcribe() (beam {args.beam_size})", f"{100 * wer_off:.1f} %"),
            ("WER streaming (partials on)", f"{100 * wer_stream:.1f} %"),
            ("streaming vs offline, relative", f"{100 * (wer_stream - wer_off) / max(wer_off, 1e-9):+.0f} %"),
            ("finalization delay p50 / p95, server latency_ms",
             f"{pct(server_ms, 50):.0f} / {pct(server_ms, 95):.0f} ms"),
            ("speech_ended → final at client p50 / p95", f"{pct(client_ms, 50):.0f} / {pct(client_ms, 95):.0f} ms"),
            ("RTF offline transcribe()", f"{rtf_off:.3f}"),
            ("RTF streaming (model time incl. partials / audio)", f"{rtf_stream:.3f}"),
        ]
        # 2) Concurrency: N real-time sessions at once until finalization p95 passes the SLO.
        best = 0
        sweep = []
        for n in args.sessions:
            items = [prompts[(i * 7) % len(prompts)][2] for i in range(n)]
            items = [np.concatenate([a, np.zeros(4000, np.float32), b])
                     for a, b in zip(items, items[::-1], strict=True)]
            res = await stream_many(srv.address, items, True)
            s_ms, _ = delays(res)
            p95 = pct(s_ms, 95)
            sweep.append(f"{n}: p95 {p95:.0f} ms")
            print(f"  {n} sessions: finalization p50 {pct(s_ms, 50):.0f} ms, p95 {p95:.0f} ms", flush=True)
            if p95 > args.finalization_slo_ms or not s_ms:
                break
            best = n
        rows.append((f"real-time sessions with finalization p95 ≤ {args.finalization_slo_ms:g} ms",
                     f"{best} ({'; '.join(sweep)})"))
    width = max(len(r[0]) for r in rows)
    print(f"\n| {'metric'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=40)
    p.add_argument("--parallel", type=int, default=6, help="prompts streamed at once in the accuracy pass")
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 6, 8, 12, 16])
    p.add_argument("--model", default="tiny.en-package")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compute-type", default="int8")
    p.add_argument("--cpu-threads", type=int, default=0)
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--window-quantum-s", type=float, default=10.0)
    p.add_argument("--final-window-quantum-s", type=float, default=30.0)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--finalization-slo-ms", type=float, default=1000.0,
                   help="the concurrency sweep stops once finalization p95 passes this")
    asyncio.run(main(p.parse_args()))
