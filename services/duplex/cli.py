"""`voxgrid duplex`: hold a full-duplex conversation with a wav file and record what the model says.

The file is streamed at real-time pace (as a caller would speak; `--fast` sends it at once and lets the
server buffer it), and the model's answer, one frame per 80 ms, is written to `--output`. Imports no
torch: it runs from any voxgrid environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from voxgrid.audio import PCM16, SUPPORTED_RATES, AudioSpec, StreamResampler, decode, encode, read_wav, write_wav
from voxgrid.client import channel
from voxgrid.v1 import duplex_pb2, duplex_pb2_grpc

CHUNK_MS = 80


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("duplex", help="full-duplex conversation with a wav file (Moshi service)")
    p.add_argument("--target", default="127.0.0.1:50064", help="duplex replica HOST:PORT")
    p.add_argument("--input", required=True, type=Path, help="wav file the caller says")
    p.add_argument("--output", required=True, type=Path, help="wav file for what the model says")
    p.add_argument("--rate", type=int, choices=SUPPORTED_RATES, default=None,
                   help="wire sample rate (default: the file's rate if supported, else 24000)")
    p.add_argument("--seed", type=int, default=None, help="fixed sampling seed")
    p.add_argument("--temperature", type=float, default=None, help="text and audio temperature (0 = greedy)")
    p.add_argument("--fast", action="store_true", help="send the file at once instead of at real-time pace")
    p.add_argument("--token", default=None, help="bearer token")
    p.add_argument("--tls", action="store_true", help="use TLS (system roots)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_duplex)


def _config(spec: AudioSpec, args: argparse.Namespace) -> duplex_pb2.DuplexConfig:
    cfg = duplex_pb2.DuplexConfig(input_format=spec.to_proto(), session_id=f"cli-{int(time.time())}")
    if args.seed is not None:
        cfg.seed = args.seed
    if args.temperature is not None:
        cfg.text_temperature = args.temperature
        cfg.audio_temperature = args.temperature
    return cfg


async def run_duplex(args: argparse.Namespace) -> int:
    samples, file_rate = read_wav(args.input)
    rate = args.rate or (file_rate if file_rate in SUPPORTED_RATES else 24000)
    spec = AudioSpec(PCM16, rate)
    data = encode(StreamResampler(file_rate, rate).process(samples, last=True), spec)
    step = spec.bytes_for_ms(CHUNK_MS)

    async def requests() -> AsyncIterator[duplex_pb2.DuplexRequest]:
        yield duplex_pb2.DuplexRequest(config=_config(spec, args))
        start = time.monotonic()
        for i, offset in enumerate(range(0, len(data), step)):
            if not args.fast:
                await asyncio.sleep(max(0.0, start + i * CHUNK_MS / 1000 - time.monotonic()))
            yield duplex_pb2.DuplexRequest(audio=data[offset : offset + step])
        yield duplex_pb2.DuplexRequest(control=duplex_pb2.DuplexControl(action=duplex_pb2.DuplexControl.ACTION_END))

    frames: list[duplex_pb2.DuplexAudio] = []
    async with channel(args.target, token=args.token, tls=args.tls or None) as ch:
        try:
            async for response in duplex_pb2_grpc.DuplexStub(ch).Converse(requests()):
                frames.append(response.audio)
        except grpc.aio.AioRpcError as err:
            print(f"duplex: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    speech = decode(b"".join(f.data for f in frames), spec)
    write_wav(args.output, speech, rate)
    steps = [f.step_ms for f in frames] or [0.0]
    summary = {
        "frames": len(frames),
        "seconds_out": round(len(speech) / rate, 3),
        "frames_late": frames[-1].frames_late if frames else 0,
        "step_ms_mean": round(statistics.fmean(steps), 1),
        "step_ms_max": round(max(steps), 1),
        "text": "".join(f.text for f in frames),
        "output": str(args.output),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['frames']} frames ({summary['seconds_out']} s) -> {args.output}; "
              f"late {summary['frames_late']}; step {summary['step_ms_mean']} ms mean, "
              f"{summary['step_ms_max']} ms max")
        print(f"text: {summary['text']!r}")
    return 0
