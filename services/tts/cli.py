"""`voxgrid speak`: send text to a TTS replica, write the audio to a wav, print time to first audio."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from voxgrid.audio import AudioSpec, decode, pcm16_spec, write_wav
from voxgrid.client import channel
from voxgrid.v1 import tts_pb2, tts_pb2_grpc


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("speak", help="synthesise text with a TTS replica into a wav file")
    p.add_argument("text", help="text to speak ('-' reads stdin)")
    p.add_argument("--target", default="127.0.0.1:50063", help="TTS replica HOST:PORT")
    p.add_argument("-o", "--output", type=Path, default=Path("speech.wav"), help="wav file to write")
    p.add_argument("--voice", default="", help="voice name (voxgrid speak --list-voices); empty = default")
    p.add_argument("--speed", type=float, default=0.0, help="rate multiplier in [0.5, 2.0]; 0 = 1.0")
    p.add_argument("--rate", type=int, default=0, help="output sample rate (8000/16000/24000/48000); 0 = voice's")
    p.add_argument("--token", default=None, help="bearer token")
    p.add_argument("--stream-chars", type=int, default=0,
                   help="send the text in pieces of this many characters at 30 pieces/s, as an LLM would")
    p.add_argument("--list-voices", action="store_true", help="print the replica's voices and exit")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=speak_command)


async def speak_command(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    async with channel(args.target, token=args.token) as ch:
        stub = tts_pb2_grpc.TextToSpeechStub(ch)
        try:
            if args.list_voices:
                from voxgrid.v1 import audio_pb2

                for m in (await stub.ListVoices(audio_pb2.ListModelsRequest())).models:
                    print(f"{m.name}\t{m.engine}\t{m.sample_rate_hz} Hz\t{','.join(m.languages)}")
                return 0
            return await _speak(stub, text, args)
        except grpc.aio.AioRpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1


async def _speak(stub: tts_pb2_grpc.TextToSpeechStub, text: str, args: argparse.Namespace) -> int:
    import asyncio

    config = tts_pb2.SynthesisConfig(voice=args.voice, speed=args.speed)
    if args.rate:
        config.output_format.CopyFrom(pcm16_spec(args.rate).to_proto())

    async def requests() -> AsyncIterator[tts_pb2.SynthesizeRequest]:
        yield tts_pb2.SynthesizeRequest(config=config)
        step = args.stream_chars or len(text) or 1
        for i in range(0, len(text), step):
            yield tts_pb2.SynthesizeRequest(text=text[i : i + step])
            if args.stream_chars:
                await asyncio.sleep(1 / 30)
        yield tts_pb2.SynthesizeRequest(control=tts_pb2.TtsControl(action=tts_pb2.TtsControl.ACTION_END))

    t0 = time.perf_counter()
    first_audio_ms = None
    chunks: list[bytes] = []
    done = None
    async for r in stub.StreamingSynthesize(requests()):
        if r.HasField("audio"):
            if first_audio_ms is None:
                first_audio_ms = 1000 * (time.perf_counter() - t0)
            chunks.append(r.audio.data)
        else:
            done = r.done
    rate = args.rate or await _voice_rate(stub, args.voice)
    spec: AudioSpec = pcm16_spec(rate)
    write_wav(args.output, decode(b"".join(chunks), spec), rate)
    result = {
        "output": str(args.output),
        "audio_ms": done.audio_ms if done else 0,
        "client_time_to_first_audio_ms": round(first_audio_ms or 0.0, 1),
        "server_time_to_first_audio_ms": round(done.time_to_first_audio_ms, 1) if done else 0.0,
        "real_time_factor": round(done.real_time_factor, 3) if done else 0.0,
        "total_ms": round(1000 * (time.perf_counter() - t0), 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"wrote {result['output']}: {result['audio_ms']} ms of audio, first audio after "
              f"{result['client_time_to_first_audio_ms']} ms (server {result['server_time_to_first_audio_ms']} ms), "
              f"RTF {result['real_time_factor']}")
    return 0


async def _voice_rate(stub: tts_pb2_grpc.TextToSpeechStub, voice: str) -> int:
    from voxgrid.v1 import audio_pb2

    models = (await stub.ListVoices(audio_pb2.ListModelsRequest())).models
    for m in models:
        if m.name == voice or not voice:
            return m.sample_rate_hz
    return models[0].sample_rate_hz
