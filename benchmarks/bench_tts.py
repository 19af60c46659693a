"""TTS benchmark: time to first audio with text arriving at LLM speed, RTF, concurrent real-time streams.

Runs a real TTS replica in-process on loopback gRPC and drives it the way the orchestrator does: text
deltas of ~4 characters at ~30 tokens/s. A stream is "real-time" when every audio chunk arrives before
a listener who started playing at the first chunk would need it (underrun = total time it would wait).

    python benchmarks/bench_tts.py [--engine piper|kokoro] [--streams 1,2,4,8] [--utterances 12]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voxgrid.services.tts.app import TtsRuntime
from voxgrid.services.tts.settings import TtsSettings

from voxgrid.client import channel
from voxgrid.server.chassis import start_server
from voxgrid.v1 import tts_pb2, tts_pb2_grpc

REPLIES = [
    "Sure, I can help with that. Your order shipped this morning and should arrive by Thursday afternoon.",
    "Okay, let me check. The next available appointment is on Monday at 10:30 am with Dr. Patel.",
    "Thanks for waiting! Your balance is $42.75, and the payment is due on the 15th of this month.",
    "Got it; I have changed your delivery address. Is there anything else I can do for you today?",
]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def one_stream(stub: tts_pb2_grpc.TextToSpeechStub, text: str, tokens_per_s: float, chars_per_token: int,
                     rate: int) -> dict[str, float]:
    """Speak one reply paced like an LLM; measure first audio, underruns and RTF."""
    t_first_text: list[float] = []

    async def requests():  # type: ignore[no-untyped-def]
        yield tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesisConfig())
        for i in range(0, len(text), chars_per_token):
            if not t_first_text:
                t_first_text.append(time.perf_counter())
            yield tts_pb2.SynthesizeRequest(text=text[i : i + chars_per_token])
            await asyncio.sleep(1 / tokens_per_s)
        yield tts_pb2.SynthesizeRequest(control=tts_pb2.TtsControl(action=tts_pb2.TtsControl.ACTION_END))

    first_audio = None
    underrun = 0.0
    done = None
    async for r in stub.StreamingSynthesize(requests()):
        now = time.perf_counter()
        if r.HasField("audio"):
            if first_audio is None:
                first_audio = now
            due = first_audio + underrun + r.audio.audio_offset_ms / 1000
            underrun += max(0.0, now - due)
        else:
            done = r.done
    assert done is not None and first_audio is not None
    return {"ttfa_ms": 1000 * (first_audio - t_first_text[0]), "server_ttfa_ms": done.time_to_first_audio_ms,
            "underrun_ms": 1000 * underrun, "rtf": done.real_time_factor, "audio_ms": done.audio_ms}


async def run(args: argparse.Namespace) -> None:
    settings = TtsSettings(port=0, engine=args.engine, device=args.device, worker_threads=args.workers,
                           onnx_threads=args.onnx_threads, first_chunk_max_chars=args.first_chunk_max_chars)
    runtime = TtsRuntime(settings)
    t0 = time.perf_counter()
    async with start_server(runtime, settings) as srv, channel(srv.address) as ch:
        load_s = time.perf_counter() - t0
        stub = tts_pb2_grpc.TextToSpeechStub(ch)
        voice = runtime.engine.voices()[0]
        print(f"engine {args.engine} voice {voice.name} ({voice.properties.get('device')}), {os.cpu_count()} cores, "
              f"{args.workers} workers x {args.onnx_threads or 'all'} onnx threads, load {load_s:.1f} s, "
              f"text at {args.tokens_per_s:g} tokens/s x {args.chars_per_token} chars, "
              f"first_chunk_max_chars {args.first_chunk_max_chars}\n")

        solo = [await one_stream(stub, REPLIES[i % len(REPLIES)], args.tokens_per_s, args.chars_per_token,
                                 voice.sample_rate_hz) for i in range(args.utterances)]
        ttfa = [r["ttfa_ms"] for r in solo]
        print("| single stream | p50 | p95 |")
        print("|---|---|---|")
        print(f"| time to first audio, client (ms) | {pct(ttfa, .5):.0f} | {pct(ttfa, .95):.0f} |")
        server = [r["server_ttfa_ms"] for r in solo]
        print(f"| time to first audio, server (ms) | {pct(server, .5):.0f} | {pct(server, .95):.0f} |")
        rtf = [r["rtf"] for r in solo]
        print(f"| real-time factor (compute / audio) | {pct(rtf, .5):.3f} | {pct(rtf, .95):.3f} |")
        print(f"\n({args.utterances} replies of ~{statistics.mean(len(t) for t in REPLIES):.0f} characters, "
              f"{statistics.mean(r['audio_ms'] for r in solo) / 1000:.1f} s of audio each)\n")

        print("| concurrent streams | TTFA p50 (ms) | TTFA p95 (ms) | underrun p95 (ms) | streams real-time |")
        print("|---|---|---|---|---|")
        for n in args.streams:
            results = await asyncio.gather(*[
                one_stream(stub, REPLIES[i % len(REPLIES)], args.tokens_per_s, args.chars_per_token,
                           voice.sample_rate_hz) for i in range(n)
            ])
            t = [r["ttfa_ms"] for r in results]
            u = [r["underrun_ms"] for r in results]
            ok = sum(1 for x in u if x <= args.underrun_budget_ms)
            print(f"| {n} | {pct(t, .5):.0f} | {pct(t, .95):.0f} | {pct(u, .95):.0f} | {ok}/{n} |")
            if ok < n:
                break
        print(f"\n(real-time: playback started at the first chunk never waits more than {args.underrun_budget_ms:g} ms "
              "in total)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", default="piper", choices=["piper", "kokoro"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--onnx-threads", type=int, default=1)
    p.add_argument("--utterances", type=int, default=12)
    p.add_argument("--streams", default="1,2,4,8,16")
    p.add_argument("--tokens-per-s", type=float, default=30.0)
    p.add_argument("--chars-per-token", type=int, default=4)
    p.add_argument("--first-chunk-max-chars", type=int, default=60)
    p.add_argument("--underrun-budget-ms", type=float, default=100.0)
    args = p.parse_args()
    args.streams = [int(x) for x in args.streams.split(",")]
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
