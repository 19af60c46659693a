"""STT benchmark: streaming vs offline WER, finalization delay, RTF, concurrent real-time sessions.

    python benchmarks/bench_stt.py                       # CPU default: tiny.en int8, ~40 telephone prompts
    python benchmarks/bench_stt.py --model large-v3 --device cuda --compute-type float16 --window-quantum-s 30
    make bench-gpu    # on a GPU: float16, sessions per GPU whose finalization p95 stays under 100 ms
    python benchmarks/bench_stt.py --turn-detection      # premature ends: semantic vs fixed silence

Audio: the recorded 8 kHz Asterisk telephone prompts (Debian asterisk-core-sounds-en-wav), streamed as
mu-law at real-time pace through a loopback gRPC server. Offline baseline: faster-whisper `transcribe()`
of the same files with the same model. Finalization delay = `Transcript.latency_ms` of finals (end of
speech seen by VAD → final leaving the server) and, client side, speech_ended arrival → final arrival.

`--turn-detection`: `--utterances` flite sentences and as many recorded human prompts
(tests/stt/turn_corpus.py: pauses of 0.5-0.8 s) sent twice in real time, with a pause mid-sentence and
whole, to fixed-silence and semantic sessions. Premature = speech_ended at the pause (an agent would
answer half a question); endpoint wait = audio the client had sent when speech_ended arrived minus the
end of speech, on the whole sentences.

`--preview`: the speculative preview (what the orchestrator prepares its answer from) against the
endpoint: whole flite sentences (and the Pipecat peer's five questions) in real time, one stream, for each
`--preview-configs` entry: the speculative final as the preview (speculative_final_ms/final window s[/beam])
or a fast preview (fastPREVIEW_MS/window s); negative = the preview arrived before speech_ended. Also: how
often the preview says the final's words (the speculative answer is released), and when the final came.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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


async def turn_detection(args: argparse.Namespace) -> None:
    import tempfile
    from pathlib import Path

    from tests.stt.turn_corpus import RATE, corpus, recorded
    from voxgrid.audio import pcm16_spec

    spec = pcm16_spec(RATE)
    settings = SttSettings(host="127.0.0.1", port=0, max_sessions=64, model=args.model, device=args.device,
                           compute_type=args.compute_type, cpu_threads=args.cpu_threads)
    runtime = SttRuntime(settings)
    runtime.engine.load()
    sets = {"flite, pieces joined by a pause": corpus(Path(tempfile.gettempdir()) / "voxgrid-turn-corpus",
                                                       args.utterances),
            "recorded human prompts, cut mid-sentence": recorded(runtime.engine.model, args.utterances)}
    modes = {
        f"fixed silence {settings.min_silence_ms} ms": stt_pb2.EndpointingConfig(
            mode=stt_pb2.ENDPOINT_MODE_FIXED_SILENCE),
        f"semantic {settings.turn_min_wait_ms}/{settings.turn_max_wait_ms} ms, p ≥ {settings.turn_threshold:g}":
            stt_pb2.EndpointingConfig(mode=stt_pb2.ENDPOINT_MODE_SEMANTIC),
    }
    lead = np.zeros(RATE // 2, np.float32)
    tail = np.zeros(int(1.5 * RATE), np.float32)

    async def one(stub, endpointing, audio: np.ndarray):
        cfg = stt_pb2.RecognitionConfig(format=spec.to_proto(), endpointing=endpointing)
        return await recognize(stub, cfg, audio_chunks(np.concatenate([lead, audio, tail]), spec))

    rows = []
    async with start_server(runtime, settings) as srv, channel(srv.address) as ch:
        stub = stt_pb2_grpc.SpeechToTextStub(ch)
        print(f"{', '.join(f'{len(v)} {k}' for k, v in sets.items())}; {args.parallel} streams at once, real time",
              flush=True)
        for (name, endpointing), (set_name, items) in itertools.product(modes.items(), sets.items()):
            if not items:
                continue
            premature, waits, capped = 0, [], 0
            for i in range(0, len(items), args.parallel):
                batch = items[i: i + args.parallel]
                paused = await asyncio.gather(*(one(stub, endpointing, u.paused) for u in batch))
                whole = await asyncio.gather(*(one(stub, endpointing, u.complete) for u in batch))
                for u, r in zip(batch, paused, strict=True):
                    pause_end_ms = 1000 * (len(lead) / RATE + u.pause_at_s + u.pause_s)
                    ends = [e for e in r.events() if e.kind == stt_pb2.SpeechEvent.KIND_SPEECH_ENDED]
                    premature += any(e.audio_offset_ms < pause_end_ms - 100 for e in ends)
                for r in whole:
                    for item in r.received:
                        ev = item.response.speech_event
                        if item.response.HasField("speech_event") and ev.kind == stt_pb2.SpeechEvent.KIND_SPEECH_ENDED:
                            waits.append(item.sent_audio_ms - ev.audio_offset_ms)
                            capped += ev.end_of_turn_reason == stt_pb2.END_OF_TURN_REASON_MAX_WAIT
                            break
            rows.append((set_name, name, 100 * premature / len(items), pct(waits, 50), pct(waits, 90), capped,
                         len(waits)))
            print(f"  {set_name}, {name}: done", flush=True)
        h = runtime.metrics.turn_inference
        count = sum(b.get() for b in h._buckets) if hasattr(h, "_buckets") else 0
        mean_ms = 1000 * h._sum.get() / count if count else float("nan")
    base = {r[0]: r[3] for r in rows[::-1]}  # the fixed-silence row of each set (listed first)
    print(f"\nturn model inference: {mean_ms:.0f} ms mean over {count:.0f} verdicts")
    print("\n| speech | endpointing | premature ends per 100 paused utterances | endpoint wait on whole sentences "
          "p50 / p90 ms | extra wait vs fixed, p50 ms | whole sentences held to the cap |")
    print("|---|---|---|---|---|---|")
    for set_name, name, prem, p50, p90, capped, n in sorted(rows, key=lambda r: r[0]):
        print(f"| {set_name} | {name} | {prem:.0f} | {p50:.0f} / {p90:.0f} | {p50 - base[set_name]:+.0f} | "
              f"{capped} of {n} |")


PEER_QUESTIONS = ("What is the capital of France?", "How many days are in a week?",
                  "What color is the sky on a clear day?", "Name a fruit that is yellow.", "What is two plus two?")


def preview_items(args: argparse.Namespace) -> list[tuple[str, np.ndarray]]:
    """(reference, 16 kHz audio): the flite turn corpus's whole sentences, plus the Pipecat peer's wavs."""
    import tempfile
    from pathlib import Path

    from tests.stt.turn_corpus import RATE, corpus
    from voxgrid.audio import StreamResampler

    items = [(u.text, u.complete) for u in corpus(Path(tempfile.gettempdir()) / "voxgrid-turn-corpus",
                                                  args.utterances)]
    for i, text in enumerate(PEER_QUESTIONS, 1):
        wav = Path(args.peer_audio) / f"q{i}.wav"
        if wav.exists():
            x, rate = read_wav(wav)
            items.append((text, StreamResampler(rate, RATE).process(x, last=True) if rate != RATE else x))
    return items


def preview_settings(entry: str) -> SttSettings:
    """`100/30[/5]`: the speculative final is the preview (speculative_final_ms / final window s / beam);
    `fast32/3`: a fast preview `preview_ms` into the silence over windows of 3 s (the final as default)."""
    common = dict(host="127.0.0.1", port=0, max_sessions=8, turn_model="")
    if entry.startswith("fast"):
        ms, quantum = entry.removeprefix("fast").split("/")
        return SttSettings(**common, fast_preview=True, preview_ms=int(ms), preview_window_quantum_s=float(quantum))
    spec_ms, quantum, *beam = entry.split("/")
    return SttSettings(**common, fast_preview=False, speculative_final_ms=int(spec_ms),
                       final_window_quantum_s=float(quantum), beam_size=int(beam[0]) if beam else 5)


async def preview_timing(args: argparse.Namespace) -> None:
    import contextlib

    from voxgrid.orchestrator.turn_taking import same_words

    from tests.stt.turn_corpus import RATE
    from voxgrid.audio import pcm16_spec

    spec = pcm16_spec(RATE)
    items = preview_items(args)
    entries = args.preview_configs.split(",")
    stats = {e: {"leads": [], "finals": [], "missing": 0, "same": 0, "hyps": []} for e in entries}
    async with contextlib.AsyncExitStack() as stack:
        stubs = {}
        for entry in entries:  # one server (and engine) per entry, all up at once: each item goes to every
            settings = preview_settings(entry)  # entry in turn, so they all see the same machine load
            settings = settings.model_copy(update=dict(model=args.model, device=args.device,
                                                       compute_type=args.compute_type, cpu_threads=args.cpu_threads))
            srv = await stack.enter_async_context(start_server(SttRuntime(settings), settings))
            stubs[entry] = stt_pb2_grpc.SpeechToTextStub(await stack.enter_async_context(channel(srv.address)))
        cfg = stt_pb2.RecognitionConfig(format=spec.to_proto(), interim_results=True)
        for k, (_, complete) in enumerate(items):
            audio = np.concatenate([np.zeros(RATE // 2, np.float32), complete, np.zeros(RATE, np.float32)])
            for entry in entries[k % len(entries):] + entries[: k % len(entries)]:
                st = stats[entry]
                r = await recognize(stubs[entry], cfg, audio_chunks(audio, spec))
                preview = next((i for i in r.received if i.response.HasField("transcript")
                                and i.response.transcript.speculative), None)
                ended = next((i.at for i in r.received if i.response.HasField("speech_event")
                              and i.response.speech_event.kind == stt_pb2.SpeechEvent.KIND_SPEECH_ENDED), None)
                final = next((i.at for i in r.received if i.response.HasField("transcript")
                              and i.response.transcript.is_final), None)
                if ended is not None and final is not None:
                    st["finals"].append(1000 * (final - ended))
                if preview is None or ended is None:
                    st["missing"] += 1
                else:
                    st["leads"].append(1000 * (preview.at - ended))
                    agree = same_words(preview.response.transcript.text, r.text)
                    st["same"] += agree
                    if not agree:
                        print(f"  {entry}: preview {preview.response.transcript.text!r} != final {r.text!r}")
                st["hyps"].append(r.text)
            print(f"  {k + 1}/{len(items)} done", flush=True)
    refs = " ".join(text for text, _ in items)
    n = len(items)
    print("\n| preview | preview − speech_ended p50 / p90 ms | previews before the endpoint | no preview "
          "| preview = final (words) | final − speech_ended p50 / p90 ms | WER of finals |")
    print("|---|---|---|---|---|---|---|")
    for entry, st in stats.items():
        leads, finals = st["leads"], st["finals"]
        print(f"| {entry} | {pct(leads, 50):+.0f} / {pct(leads, 90):+.0f} | {sum(v < 0 for v in leads)} of {n} "
              f"| {st['missing']} | {st['same']} of {n - st['missing']} | {pct(finals, 50):+.0f} / "
              f"{pct(finals, 90):+.0f} | {100 * word_error_rate(refs, ' '.join(st['hyps'])):.1f} % |")


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
    if args.turn_detection:
        return await turn_detection(args)
    if args.preview:
        return await preview_timing(args)
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
    p.add_argument("--turn-detection", action="store_true",
                   help="instead: premature ends per 100 paused utterances, semantic vs fixed silence")
    p.add_argument("--utterances", type=int, default=20, help="--turn-detection: utterances with a pause")
    p.add_argument("--preview", action="store_true",
                   help="instead: when the speculative preview arrives relative to speech_ended")
    p.add_argument("--preview-configs", default="100/30,fast32/3,fast96/3",
                   help="--preview: entries, comma-separated: speculative_final_ms/final_window_quantum_s[/beam_size] "
                   "(the speculative final is the preview) or fastPREVIEW_MS/PREVIEW_WINDOW_S (a fast preview)")
    p.add_argument("--peer-audio", default="/tmp/peer/audio",
                   help="--preview: the Pipecat peer's q1..q5.wav, added to the flite sentences when present")
    asyncio.run(main(p.parse_args()))
