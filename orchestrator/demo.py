"""The quickstart's demo: a spoken question through the real gRPC path of the local stack."""

from __future__ import annotations

import tempfile
from pathlib import Path

from voxgrid.orchestrator.talk import print_turn, synthesize_question, talk

from voxgrid.audio import AudioSpec, read_wav, write_wav

QUESTION = "What is the capital of France?"


async def run_demo(target: str, out_dir: str = "out") -> int:
    print(f"\ndemo: asking the agent {QUESTION!r} (speech synthesised with flite, streamed in real time)")
    with tempfile.TemporaryDirectory() as tmp:
        samples, rate = read_wav(synthesize_question(QUESTION, Path(tmp) / "question.wav"))
    record, config = await talk(target, samples, rate)
    print_turn(record)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fmt = config.input_format
    reply = record.agent_audio(AudioSpec(fmt.encoding, fmt.sample_rate_hz))
    write_wav(out / "demo_reply.wav", reply, fmt.sample_rate_hz)
    print(f"  reply audio: {out / 'demo_reply.wav'} ({len(reply) / fmt.sample_rate_hz:.1f} s)")
    return 0 if record.of("latency") else 1
