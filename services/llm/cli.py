"""`voxgrid generate`: ask a running LLM service one question and stream the answer."""

from __future__ import annotations

import argparse
import json
import sys

import grpc
from voxgrid.services.llm.client import ChatStream, system, user, user_audio

from voxgrid.audio import SUPPORTED_RATES, StreamResampler, read_wav
from voxgrid.client import channel
from voxgrid.v1 import audio_pb2, llm_pb2


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="stream an LLM answer to a prompt (prints time to first token)")
    p.add_argument("prompt", help="the user message (with --audio: text sent with the speech, may be empty)")
    p.add_argument("--audio", default="", help="a WAV file of the user's speech, for a speech-in model (hybrid mode)")
    p.add_argument("--target", default="127.0.0.1:50062", help="LLM service HOST:PORT")
    p.add_argument("--system", default="", help="system prompt")
    p.add_argument("--max-tokens", type=int, default=256, help="upper bound on generated tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--model", default="", help="model name (empty = the replica's default)")
    p.add_argument("--token", default=None, help="bearer token, if the server requires one")
    p.add_argument("--json", action="store_true", help="print one JSON object (text, usage, timing) instead")
    p.set_defaults(func=generate)


async def generate(args: argparse.Namespace) -> int:
    if args.audio:
        try:
            samples, rate = read_wav(args.audio)
        except (OSError, RuntimeError) as exc:
            print(f"error: cannot read --audio {args.audio}: {exc}", file=sys.stderr)
            return 2
        if rate not in SUPPORTED_RATES:  # the wire takes a few rates; anything else is converted here
            samples, rate = StreamResampler(rate, 16000).process(samples, last=True), 16000
        turn = user_audio(samples, rate, args.prompt)
    else:
        turn = user(args.prompt)
    messages = ([system(args.system)] if args.system else []) + [turn]
    sampling = audio_pb2.SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
    async with channel(args.target, token=args.token) as ch, ChatStream(ch, model=args.model) as chat:
        queue = chat.start("1", messages, sampling)
        result = await chat.collect(queue, on_response=None if args.json else _print_event)
    if chat.stream_error is not None:
        err: grpc.aio.AioRpcError = chat.stream_error
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    done = result.done or llm_pb2.GenerationDone()
    if args.json:
        print(json.dumps({
            "text": result.text,
            "tool_calls": [{"name": c.name, "arguments": json.loads(c.arguments_json)} for c in result.tool_calls],
            "errors": [{"code": e.code, "message": e.message} for e in result.errors],
            "finish_reason": llm_pb2.FinishReason.Name(done.finish_reason),
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "cached_prompt_tokens": done.cached_prompt_tokens,
            "time_to_first_token_ms": round(done.time_to_first_token_ms, 1),
            "client_time_to_first_token_ms": result.client_ttft_ms and round(result.client_ttft_ms, 1),
            "total_ms": round(done.total_ms, 1),
        }))
    else:
        for e in result.errors:
            print(f"error: {e.message}", file=sys.stderr)
        print(
            f"\n[{llm_pb2.FinishReason.Name(done.finish_reason).removeprefix('FINISH_REASON_').lower()}; "
            f"time to first token {done.time_to_first_token_ms:.0f} ms (server), "
            f"{done.completion_tokens} tokens in {done.total_ms:.0f} ms]",
            file=sys.stderr,
        )
    return 1 if result.errors else 0


def _print_event(response: llm_pb2.ChatResponse) -> None:
    kind = response.WhichOneof("event")
    if kind == "delta":
        print(response.delta.text, end="", flush=True)
    elif kind == "tool_call":
        print(f"[tool call {response.tool_call.name}({response.tool_call.arguments_json})]", flush=True)
