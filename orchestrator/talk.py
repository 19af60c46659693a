"""`voxgrid talk`: speak a recording (or the microphone) to the agent and keep what it answers."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import json_format
from google.protobuf.json_format import MessageToDict
from voxgrid.orchestrator.client import TE, AgentCall, CallRecord, describe, list_profiles, session_config

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


@dataclass
class Script:
    """Live control to try by hand: sent after the agent's `after_turn`-th answer (in the order add_message,
    update, say), then the caller speaks again, so the effect is heard in the next answer."""

    after_turn: int = 1
    messages: list[tuple[str, str]] = field(default_factory=list)  # (role, text)
    updates: list[tuple[agent_pb2.SessionConfig, str]] = field(default_factory=list)  # (values, mask path)
    says: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.messages or self.updates or self.says)


def parse_update(spec: str) -> tuple[agent_pb2.SessionConfig, str]:
    """`PATH=VALUE` -> (a SessionConfig holding VALUE at PATH, PATH). VALUE is JSON when it parses as JSON
    (numbers, lists of tools, objects), else a string: `system_prompt=You are a pirate.`,
    `sampling.temperature=0.2`, `profile=support`, `turn_taking.min_interruption_words=4`."""
    path, sep, raw = spec.partition("=")
    if not sep or not path:
        raise SystemExit(f"--update {spec!r}: write PATH=VALUE, e.g. system_prompt='You are a pirate.'")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    doc: object = value
    for part in reversed(path.split(".")):
        doc = {part: doc}
    config = agent_pb2.SessionConfig()
    try:
        json_format.ParseDict(doc, config)
    except json_format.ParseError as exc:
        raise SystemExit(f"--update {spec!r}: {exc}") from exc
    return config, path


def parse_message(spec: str) -> tuple[str, str]:
    role, sep, text = spec.partition(":")
    if not sep:
        raise SystemExit(f"--add-message {spec!r}: write ROLE:TEXT, e.g. 'system:The caller is Ada.'")
    return role, text


def answers(call: AgentCall) -> int:
    """Agent turns over so far (finished or cut off)."""
    return len(call.record.events(TE.KIND_AGENT_STOPPED_SPEAKING)) + len(call.record.events(TE.KIND_INTERRUPTED))


async def _speak_and_wait(call: AgentCall, samples: np.ndarray, rate: int, timeout_s: float) -> None:
    want = answers(call) + 1
    await call.stream(samples, rate)
    await call.silence(timeout_s, until=lambda: answers(call) >= want or call.done.is_set())


async def _run_script(call: AgentCall, script: Script, samples: np.ndarray, rate: int, timeout_s: float) -> None:
    for _ in range(1, script.after_turn):
        await _speak_and_wait(call, samples, rate, timeout_s)
    for role, text in script.messages:
        call.add_message(role, text)
    for config, path in script.updates:
        call.update(config, path)
    want = answers(call) + len(script.says)
    for text in script.says:
        call.say(text)
    acks = len(script.updates)
    await call.silence(timeout_s, until=lambda: call.done.is_set() or (
        len(call.record.of("updated")) + len(call.record.of("notice")) >= acks and answers(call) >= want))
    await _speak_and_wait(call, samples, rate, timeout_s)


async def talk(
    target: str, samples: np.ndarray, rate: int, *, phone: bool = False, token: str | None = None,
    system_prompt: str = "", voice: str = "", profile: str = "", timeout_s: float = 90.0,
    script: Script | None = None,
) -> tuple[CallRecord, agent_pb2.SessionConfig]:
    """Stream one utterance in real time, wait for the agent's whole answer; returns the call record.

    With a `script`, its live-control messages are sent after that answer and the utterance is spoken
    again. The call then ends (AgentControl END), so the record ends with the session's usage report.

    Empty `system_prompt`/`voice` leave the fields unset (the profile's or the server's default), since a
    field set to "" would say "no persona" / "the replica's default voice" over the profile.
    """
    encoding, in_rate = (MULAW, 8000) if phone else (PCM16, 16000)
    chosen = {k: v for k, v in (("system_prompt", system_prompt), ("voice", voice)) if v}
    config = session_config(rate=in_rate, encoding=encoding, profile=profile, **chosen)
    if profile:
        config.ClearField("mode")  # the profile says which mode
    async with channel(target, token=token) as ch, AgentCall(agent_pb2_grpc.AgentStub(ch), config) as call:
        await _speak_and_wait(call, samples, rate, timeout_s)
        if script and not call.done.is_set():
            await _run_script(call, script, samples, rate, timeout_s)
        call.end()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.done.wait(), 10)
        if call.error is not None:
            raise SystemExit(f"the agent refused the call: {describe(call.error_details)}")
        return call.record, config


def summary(record: CallRecord) -> dict:
    latencies = record.of("latency")
    return {
        "user": " ".join(record.finals()),
        "agent": record.agent_text().strip(),
        "latency": [{f.name: getattr(lat, f.name) for f in lat.DESCRIPTOR.fields} for lat in latencies],
        "session_id": record.started.session_id if record.started else "",
        "notices": [{"reason": d.reason, "stage": n.stage, "message": n.message} for n, d in record.notices()],
        "updates": [{"paths": list(u.paths), "kept": list(u.kept)} for u in record.of("updated")],
        "usage": MessageToDict(record.final_usage, preserving_proto_field_name=True) if record.final_usage else {},
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
        print(f"  notice ({notice['stage']}, {notice['reason'] or 'no reason'}): {notice['message']}")
    for update in s["updates"]:
        print(f"  update applied: {', '.join(update['paths'])}"
              + (f" (kept the call's {', '.join(update['kept'])})" if update["kept"] else ""))
    if s["usage"]:
        print("  usage: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in s["usage"].items()))


def print_profiles(listed: agent_pb2.ListProfilesResponse) -> None:
    for p in listed.profiles:
        default = " (default)" if p.name == listed.default_profile else ""
        print(f"{p.name}{default}: {p.description or '-'} [mode {agent_pb2.AgentMode.Name(p.mode or 1)}, "
              f"voice {p.voice or 'default'}, language {p.language or 'en'}, adapter {p.adapter or 'none'}]")
    if not listed.profiles:
        print("this orchestrator serves no profiles (set its profiles_file)")


async def run_talk(args: argparse.Namespace) -> int:
    if args.list_profiles:
        async with channel(args.target, token=args.token) as ch:
            print_profiles(await list_profiles(agent_pb2_grpc.AgentStub(ch)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.input) if args.input else synthesize_question(args.say, Path(tmp) / "q.wav")
        samples, rate = read_wav(path)
    script = Script(args.after_turn, [parse_message(m) for m in args.add_message],
                    [parse_update(u) for u in args.update], list(args.agent_say))
    record, config = await talk(args.target, samples, rate, phone=args.phone, token=args.token,
                                system_prompt=args.system, voice=args.voice, profile=args.profile, script=script)
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
    p.add_argument("--profile", default="", help="agent profile served by the orchestrator (see --list-profiles)")
    p.add_argument("--list-profiles", action="store_true", help="print the orchestrator's profiles and exit")
    p.add_argument("--token", default=None, help="bearer token")
    p.add_argument("--json", action="store_true", help="JSON lines: every event, then a summary")
    live = p.add_argument_group("live control", "sent after the agent's --after-turn answer; then the input is "
                                "spoken again, so the next answer shows the effect")
    live.add_argument("--update", action="append", default=[], metavar="PATH=VALUE",
                      help="change the session mid-call, e.g. system_prompt='You are a pirate.', "
                      "sampling.temperature=0.2, profile=support (repeatable)")
    live.add_argument("--agent-say", action="append", default=[], metavar="TEXT",
                      help="have the agent speak TEXT (repeatable)")
    live.add_argument("--add-message", action="append", default=[], metavar="ROLE:TEXT",
                      help="add context without speaking, e.g. 'system:The caller is Ada, premium plan.' (repeatable)")
    live.add_argument("--after-turn", type=int, default=1, help="send them after this answer (default 1)")
    p.set_defaults(func=run_talk)

