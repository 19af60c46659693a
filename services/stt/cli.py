"""`voxgrid transcribe AUDIO_FILE --target HOST:PORT`: stream a wav file to the STT service, print results."""

from __future__ import annotations

import argparse
import json
import sys

import grpc
from voxgrid.services.stt.client import Received, audio_chunks, recognize

from voxgrid.audio import SUPPORTED_RATES, AudioSpec, StreamResampler, pcm16_spec, read_wav
from voxgrid.client import channel
from voxgrid.v1 import stt_pb2, stt_pb2_grpc


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="stream an audio file to an STT replica and print transcripts")
    p.add_argument("audio_file", help="wav file (any rate; sent as PCM16 at its rate if supported, else 16 kHz)")
    p.add_argument("--target", default="127.0.0.1:50061", help="STT replica HOST:PORT")
    p.add_argument("--realtime", action="store_true", help="send at real-time pace (default: as fast as possible)")
    p.add_argument("--json", action="store_true", help="one JSON object per line: type, text, timings")
    p.add_argument("--no-partials", dest="partials", action="store_false", help="finals only")
    p.add_argument("--language", default="", help="ISO 639-1 code; empty = the model's default")
    p.add_argument("--token", default=None, help="bearer token")
    p.add_argument("--chunk-ms", type=int, default=20, help="audio per message, ms")
    p.set_defaults(func=transcribe)


def _line(item: Received, as_json: bool) -> str | None:
    r = item.response
    if r.WhichOneof("result") == "speech_event":
        ev = r.speech_event
        kind = "speech_started" if ev.kind == stt_pb2.SpeechEvent.KIND_SPEECH_STARTED else "speech_ended"
        if as_json:
            return json.dumps({"type": kind, "utterance_id": ev.utterance_id, "audio_offset_ms": ev.audio_offset_ms})
        return f"[{kind} #{ev.utterance_id} at {ev.audio_offset_ms} ms]"
    t = r.transcript
    kind = "final" if t.is_final else "partial"
    if as_json:
        doc = {"type": kind, "utterance_id": t.utterance_id, "text": t.text, "committed_text": t.committed_text,
               "stability": round(t.stability, 3), "start_ms": t.start_ms, "end_ms": t.end_ms,
               "latency_ms": round(t.latency_ms, 1)}
        if t.is_final:
            doc["confidence"] = round(t.confidence, 3)
            doc["words"] = [{"word": w.word, "start_ms": w.start_ms, "end_ms": w.end_ms,
                             "confidence": round(w.confidence, 3)} for w in t.words]
        return json.dumps(doc)
    if t.is_final:
        return f"final #{t.utterance_id} [{t.start_ms}-{t.end_ms} ms, {t.latency_ms:.0f} ms after end]: {t.text}"
    return f"  partial #{t.utterance_id}: {t.text}"


async def transcribe(args: argparse.Namespace) -> int:
    try:
        samples, rate = read_wav(args.audio_file)
    except Exception as exc:  # soundfile's errors are specific enough to show as they are
        print(f"cannot read {args.audio_file}: {exc}", file=sys.stderr)
        return 2
    if rate not in SUPPORTED_RATES:
        samples, rate = StreamResampler(rate, 16000).process(samples, last=True), 16000
    spec: AudioSpec = pcm16_spec(rate)
    config = stt_pb2.RecognitionConfig(format=spec.to_proto(), interim_results=args.partials, language=args.language)
    async with channel(args.target, token=args.token) as ch:
        stub = stt_pb2_grpc.SpeechToTextStub(ch)

        def show(item: Received) -> None:
            line = _line(item, args.json)
            if line is not None:
                print(line, flush=True)

        try:
            await recognize(stub, config, audio_chunks(samples, spec, args.chunk_ms), realtime=args.realtime,
                            chunk_ms=args.chunk_ms, on_response=show)
        except grpc.aio.AioRpcError as err:
            print(f"error {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    return 0
