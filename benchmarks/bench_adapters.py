"""Time to first token and decode speed with a LoRA adapter versus without, transformers engine on CPU.

Random rank-8 adapters on q/k/v/o (made with peft on the spot, so only their cost is measured, not what they
say) served from an adapters_dir, over loopback gRPC, against the same model served without adapters:

    .venv/bin/python -m benchmarks.bench_adapters                       # tiny random Qwen2 (seconds)
    .venv/bin/python -m benchmarks.bench_adapters --model qwen2.5-coder-0.5b-instruct --requests 6
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path

from voxgrid.services.llm.app import LlmRuntime, LlmSettings
from voxgrid.services.llm.assets import resolve_model
from voxgrid.services.llm.client import ChatStream, Result, system, user

from benchmarks.common import pct, table
from voxgrid.client import channel
from voxgrid.server.chassis import start_server
from voxgrid.v1 import audio_pb2

QUESTIONS = ["Where is my order?", "Can I change the delivery address?", "What are your opening hours?",
             "How do I reset my password?", "Do you ship abroad?", "Can I pay by invoice?"]


def make_adapters(model_name: str, folder: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for seed, name in enumerate(("support", "sales"), start=1):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(resolve_model(model_name), dtype=torch.float32)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                            init_lora_weights=False)
        get_peft_model(model, config).save_pretrained(folder / name)


async def run(address: str, adapters: list[str], requests: int, max_tokens: int, first: int = 0) -> list[Result]:
    """`requests` rounds from round `first` on; in each, one request per adapter in `adapters`, all at once
    (new session each)."""
    sampling = audio_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens)
    results: list[Result] = []
    async with channel(address) as ch:
        async def one(adapter: str, i: int, n: int) -> Result:
            async with ChatStream(ch, session_id=f"b{i}-{n}-{adapter}", adapter=adapter) as chat:
                question = f"Caller {i}-{n}. {QUESTIONS[i % len(QUESTIONS)]}"
                return await chat.generate("q", [system("You are a helpful agent."), user(question)], sampling)

        for i in range(first, first + requests):
            results += await asyncio.gather(*(one(a, i, n) for n, a in enumerate(adapters)))
    return results


def row(what: str, results: list[Result]) -> list[object]:
    done = [r.done for r in results if r.done is not None]
    ttft = [d.time_to_first_token_ms for d in done]
    tps = [(d.completion_tokens - 1) / ((d.total_ms - d.time_to_first_token_ms) / 1e3)
           for d in done if d.completion_tokens > 1 and d.total_ms > d.time_to_first_token_ms]
    return [what, len(done), f"{pct(ttft, 50):.0f}", f"{pct(ttft, 90):.0f}", f"{statistics.median(tps):.1f}"]


async def main(args: argparse.Namespace) -> None:
    """Both servers run side by side and the cases take turns round by round, so a change in the machine's
    load during the run (other processes) falls on every case alike instead of on whichever ran last."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        await asyncio.to_thread(make_adapters, args.model, folder)
        common = dict(host="127.0.0.1", port=0, model=args.model, dtype=args.dtype, max_model_len=1024,
                      torch_threads=args.threads, prefill_chunk_tokens=0)
        plain_settings = LlmSettings(**common, adapters_dir=None)
        lora_settings = LlmSettings(**common, adapters_dir=folder)
        async with (start_server(LlmRuntime(plain_settings), plain_settings) as plain,
                    start_server(LlmRuntime(lora_settings), lora_settings) as lora):
            cases = [("no adapters loaded: base model", plain.address, [""]),
                     ("adapters loaded: base model", lora.address, [""]),
                     ("adapters loaded: adapter support", lora.address, ["support"]),
                     ("2 at once: support + sales", lora.address, ["support", "sales"]),
                     ("2 at once: base + support", lora.address, ["", "support"])]
            for address in (plain.address, lora.address):
                await run(address, [""], 1, 4)  # warm-up
            results: dict[str, list[Result]] = {what: [] for what, _, _ in cases}
            for i in range(args.requests):
                for what, address, adapters in cases:
                    results[what] += await run(address, adapters, 1, args.max_tokens, first=i)
    print(f"\nLoRA cost, transformers engine, {args.model} ({args.dtype}), {os.cpu_count()} CPUs, "
          f"{args.requests} rounds x {args.max_tokens} tokens, greedy, cases interleaved round by round")
    print(table(["served", "requests", "TTFT p50 ms", "TTFT p90 ms", "decode tok/s p50"],
                [row(what, results[what]) for what, _, _ in cases]))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="tiny-random-qwen2")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
