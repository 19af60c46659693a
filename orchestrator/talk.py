"""`voxgrid talk`: speak a recording (or the microphone) to the agent and keep what it answers."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from google.protobuf.json_format import MessageToDict
from voxgrid.orchestrator.client import TE, AgentCall, CallRecord, session_config

from voxgrid.audio import MULAW, PCM16, AudioSpec, read_wav, write_wav
from voxgrid.client import channel
from voxgrid.speech import FliteMissing, synthesize
from voxgrid.v1 import agent_pb2, agent_pb2_grpc


def synthesize_question(text: str, path: Path) -> Path:
    """Speech made on the spot with flite (no model files needed)."""
    try:
        synthesize(text, path)
    except FliteMissing as exc:
        raise SystemExit(f"{exc}, or pass --input a.wav") from exc
    return path


async def talk(
    target: str, samples: np.ndarray, rate: int, *, phone: bool = False, token: str | None = None,
    system_prompt: str = "", voice: str = "", timeout_s: float = 90.0,
) -> tuple[CallRecord, agent_pb2.SessionConfig]:
    """Stream one utterance in real time, wait for the agent's whole answer; returns the call record."""
    encoding, in_rate = (MULAW, 8000) if phone else (PCM16, 16000)
    config = session_config(rate=in_rate, encoding=encoding, system_prompt=system_prompt, voice=voice)
    async with channel(target, token=token) as ch, AgentCall(agent_pb2_grpc.AgentStub(ch), config) as call:
        await call.stream(samples, rate)
        await call.silence(timeout_s, until=lambda: bool(
            call.record.events(TE.KIND_AGENT_STOPPED_SPEAKING) or call.record.events(TE.KIND_INTERRUPTED)
            or call.done.is_set()))
        if call.error is not None:
            raise SystemExit(f"the agent refused the call: {call.error.code().name}: {call.error.details()}")
        return call.record, config


def summary(record: CallRecord) -> dict:
    latencies = record.of("latency")
    return {
        "user": " ".join(record.finals()),
        "agent": record.agent_text().strip(),
        "latency": [{f.name: getattr(lat, f.name) for f in lat.DESCRIPTOR.fields} for lat in latencies],
        "notices": [n.message for n in record.of("notice")],
    }


def print_turn(record: CallRecord) -> None:
    s = summary(record)
    print(f"  you said:   {s['user']!r}")
    print(f"  agent said: {s['agent']!r}")
    for lat in record.of("latency"):
        print(f"  voice-to-voice {lat.voice_to_voice_ms:.0f} ms = endpoint wait {lat.endpoint_wait_ms:.0f} "
              f"+ STT final {lat.stt_finalization_ms:.0f} + LLM first token {lat.llm_time_to_first_token_ms:.0f} "
              f"+ TTS first audio {lat.tts_time_to_first_audio_ms:.0f} + orchestration "
              f"{lat.orchestration_overhead_ms:.0f}" + (f" + tools {lat.tool_ms:.0f}" if lat.tool_ms else ""))
    for notice in s["notices"]:
        print(f"  notice: {notice}")


async def run_talk(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.input) if args.input else synthesize_question(args.say, Path(tmp) / "q.wav")
        samples, rate = read_wav(path)
    record, config = await talk(args.target, samples, rate, phone=args.phone, token=args.token,
                                   system_prompt=args.system, voice=args.voice)
    out_spec_rate = config.input_format.sample_rate_hz
    reply = record.agent_audio(AudioSpec(config.input_format.encoding, out_spec_rate))
    if args.output:
        write_wav(args.output, reply, out_spec_rate)
    if args.json:
        for _, r in record.responses:
            kind = r.WhichOneof("event")
            if kind == "agent_audio":
                continue
            print(json.dumps({"type": kind, **MessageToDict(getattr(r, kind))}))
        print(json.dumps({"type": "summary", **summary(record), "reply_wav": args.output}))
    else:
        print_turn(record)
        if args.output:
            print(f"  reply audio: {args.output} ({len(reply) / out_spec_rate:.1f} s)")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("talk", help="speak a wav file (or a sentence via flite) to the agent, save its reply")
    p.add_argument("--target", default="127.0.0.1:50051", help="orchestrator HOST:PORT")
    p.add_argument("--input", help="wav file to speak (any rate); default: --say synthesised with flite")
    p.add_argument("--say", default="What is the capital of France?", help="sentence to synthesise when no --input")
    p.add_argument("--output", default="reply.wav", help="where to write the agent's audio")
    p.add_argument("--phone", action="store_true", help="send and receive 8 kHz mu-law, as a phone line would")
    p.add_argument("--system", default="", help="system prompt (persona)")
    p.add_argument("--voice", default="", help="TTS voice name")
    p.add_argument("--token", default=None, help="bearer token")
    p.add_argument("--json", action="store_true", help="JSON lines: every event, then a summary")
    p.set_defaults(func=run_talk)

