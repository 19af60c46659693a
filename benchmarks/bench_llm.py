"""LLM service benchmark over loopback gRPC: time to first token, throughput, cancel latency, prewarm gain.

    python benchmarks/bench_llm.py                       # CPU engine, packaged Qwen2.5 0.5B (~3 min)
    python benchmarks/bench_llm.py --model tiny-random-qwen2   # plumbing only (seconds)
    python benchmarks/bench_llm.py --engine vllm --model qwen2.5-7b-shape-only --load-format dummy \\
        --concurrency 1,32,128 --requests 256             # on a GPU host with the llm-vllm extra

Every number comes from a real server in this process reached through a real socket; time to first
token is the server's own measurement (request arrival → first token), reported in each `done`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voxgrid.services.llm.app import LlmRuntime
from voxgrid.services.llm.client import ChatStream, Result, assistant, system, user
from voxgrid.services.llm.settings import LlmSettings

from benchmarks.common import pct, table
from voxgrid.client import channel
from voxgrid.server.chassis import start_server
from voxgrid.v1 import audio_pb2, llm_pb2

QUESTIONS = [
    "What is the capital of France?",
    "Can I book a table for two at eight tonight?",
    "How long does delivery to the city centre take?",
    "Do you have vegetarian dishes on the menu?",
    "What time do you close on Sundays?",
    "Can I pay by card over the phone?",
    "Is there parking near the restaurant?",
    "Could you repeat my order, please?",
]
PERSONA = (
    "You are Ava, the voice assistant of Trattoria Lucia, an Italian restaurant at 12 Harbour Street. "
    "Opening hours: Tuesday to Sunday, 12:00-15:00 and 18:00-23:00; closed on Mondays. Tables seat two "
    "to eight people; larger groups must call the manager. Delivery covers a 5 km radius and takes 30 to "
    "45 minutes; orders over 30 euros are delivered free. The menu has pizzas, fresh pasta, risotto, "
    "grilled fish and seasonal desserts; every pasta dish has a vegetarian option and gluten-free pasta "
    "costs 2 euros extra. Card payments are accepted at the door, not over the phone. There is a public "
    "car park 200 m away on Quay Road. Answer in one or two short spoken sentences, never use lists or "
    "markdown, confirm names, times and numbers back to the caller, and hand over to a human when asked."
)
HISTORY = [
    system(PERSONA),
    user("Hi, is this Trattoria Lucia?"),
    assistant("Yes, this is Ava at Trattoria Lucia. How can I help you today?"),
]


@dataclass
class LoadRow:
    concurrency: int
    requests: int
    ttft_p50: float
    ttft_p95: float
    stream_tokens_per_s: float
    total_tokens_per_s: float


async def load_run(address: str, concurrency: int, requests: int, max_tokens: int) -> LoadRow:
    """`concurrency` clients, each sending its next request when the previous one is done."""
    sampling = audio_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens)
    prompts = itertools.cycle(QUESTIONS)
    todo = [next(prompts) for _ in range(requests)]
    results: list[Result] = []

    async def worker(index: int) -> None:
        # A new session per request: no prefix cache from an earlier turn, so these are cold prompts.
        async with channel(address) as ch:
            n = 0
            while todo:
                question = todo.pop()
                n += 1
                async with ChatStream(ch, session_id=f"load-{concurrency}-{index}-{n}") as chat:
                    results.append(await chat.generate("q", [*HISTORY, user(question)], sampling))

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    wall = time.perf_counter() - started
    done = [r.done for r in results if r.done is not None]
    ttfts = [d.time_to_first_token_ms for d in done]
    per_stream = [
        (d.completion_tokens - 1) / ((d.total_ms - d.time_to_first_token_ms) / 1e3)
        for d in done if d.completion_tokens > 1 and d.total_ms > d.time_to_first_token_ms
    ]
    return LoadRow(concurrency, len(done), pct(ttfts, 50), pct(ttfts, 95), statistics.mean(per_stream),
                   sum(d.completion_tokens for d in done) / wall)


async def cancel_run(address: str, samples: int) -> list[float]:
    """ms from sending `cancel` (after the 2nd delta) to receiving `done(CANCELLED)`."""
    latencies = []
    sampling = audio_pb2.SamplingParams(temperature=0.0, max_tokens=2000)
    async with channel(address) as ch, ChatStream(ch, session_id="cancel") as chat:
        for i in range(samples):
            queue = chat.start(f"c{i}", [*HISTORY, user("Tell me the whole history of Italian cooking.")], sampling)
            deltas, sent_at = 0, 0.0
            while True:
                response = await queue.get()
                assert isinstance(response, llm_pb2.ChatResponse)
                kind = response.WhichOneof("event")
                if kind == "delta":
                    deltas += 1
                    if deltas == 2:
                        sent_at = time.perf_counter()
                        chat.cancel(f"c{i}")
                elif kind == "done":
                    if response.done.finish_reason == llm_pb2.FINISH_REASON_CANCELLED:
                        latencies.append((time.perf_counter() - sent_at) * 1e3)
                    break
    return latencies


async def prewarm_run(address: str, rounds: int) -> tuple[list[float], list[float], list[int]]:
    """Same prompts, alternating: cold generate vs prewarm(partial transcript) then generate."""
    one = audio_pb2.SamplingParams(temperature=0.0, max_tokens=1)
    cold, warm, cached = [], [], []
    async with channel(address) as ch:
        for i in range(rounds):
            question = QUESTIONS[i % len(QUESTIONS)]
            partial = " ".join(question.split()[: max(1, len(question.split()) // 2)])
            async with ChatStream(ch, session_id=f"cold-{i}") as chat:
                result = await chat.generate("cold", [*HISTORY, user(question)], one)
                assert result.done is not None
                cold.append(result.done.time_to_first_token_ms)
            async with ChatStream(ch, session_id=f"warm-{i}") as chat:
                await chat.prewarm([*HISTORY, user(partial)])
                result = await chat.generate("warm", [*HISTORY, user(question)], one)
                assert result.done is not None
                warm.append(result.done.time_to_first_token_ms)
                cached.append(result.done.cached_prompt_tokens)
    return cold, warm, cached


async def main(args: argparse.Namespace) -> None:
    settings = LlmSettings(
        host="127.0.0.1", port=0, metrics_port=-1, engine=args.engine, model=args.model,
        load_format=args.load_format, max_running=max(args.concurrency), max_sessions=max(args.concurrency) + 8,
    )
    runtime = LlmRuntime(settings)
    load_started = time.perf_counter()
    async with start_server(runtime, settings) as server:
        print(f"engine {args.engine}, model {args.model}: ready in {time.perf_counter() - load_started:.1f} s")
        # One untimed request: first-call allocations are not a request's latency.
        await load_run(server.address, 1, 1, 4)
        rows = [await load_run(server.address, c, max(args.requests, c), args.max_tokens) for c in args.concurrency]
        cancels = await cancel_run(server.address, args.cancels)
        cold, warm, cached = await prewarm_run(server.address, args.prewarm_rounds)
        prompt_tokens = runtime.engine.describe().properties.get("context_length", "?")

    print(f"\n### LLM service, {args.engine} engine, model `{args.model}` (loopback gRPC, server-side timing)\n")
    print(f"max_tokens {args.max_tokens}, greedy, persona + history prompt (~{len(PERSONA) // 4 + 60} tokens), "
          f"context {prompt_tokens}\n")
    print(table(
        ["concurrent streams", "requests", "TTFT p50 ms", "TTFT p95 ms", "tokens/s per stream", "tokens/s total"],
        [[r.concurrency, r.requests, r.ttft_p50, r.ttft_p95, r.stream_tokens_per_s, r.total_tokens_per_s]
         for r in rows],
    ))
    print()
    print(table(
        ["cancel → done (sent after the 2nd delta)", "samples", "p50 ms", "p99 ms", "max ms"],
        [["cancel", len(cancels), pct(cancels, 50), pct(cancels, 99), max(cancels)]],
    ))
    ratio = statistics.median(warm) / statistics.median(cold)
    print()
    print(table(
        ["same prompts", "rounds", "TTFT p50 ms", "TTFT p95 ms", "cached prompt tokens (median)"],
        [["no prewarm", len(cold), statistics.median(cold), pct(cold, 95), 0],
         ["prewarm (partial transcript)", len(warm), statistics.median(warm), pct(warm, 95),
          int(statistics.median(cached))]],
    ))
    print(f"\nprewarm / no-prewarm TTFT ratio (p50): {ratio:.2f}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--load-format", default="auto", help="vllm: `dummy` for random weights of the real shape")
    p.add_argument("--concurrency", default="1,4", help="comma-separated concurrent stream counts")
    p.add_argument("--requests", type=int, default=8, help="requests per concurrency level (at least one per stream)")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--cancels", type=int, default=20)
    p.add_argument("--prewarm-rounds", type=int, default=8)
    args = p.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
