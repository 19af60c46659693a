"""vLLM's CUDA build behind the LLM service over loopback gRPC: a real-size architecture, and LoRA.

- Qwen2.5-7B's shape (config + tokenizer, no weights: `qwen2.5-7b-shape-only`) with `load_format=dummy`:
  random weights at full size, so memory, kernels, CUDA graphs, prefix caching and batching are the real
  ones. Its text is noise: the checks are on behaviour (streaming, usage, cache hits, cancel, limits).
- LoRA: a small random Qwen2 (head size 64, which the GPU attention kernels take) with two random adapters
  made with peft at test time (tests/llm/lora.py); sessions on different adapters batched together get
  what each gets alone.

The model folders come from the main venv (`make test-gpu` builds them first: the tokenizer comes from
the packaged GGUF, which this venv does not carry). Run in .venv-gpu-vllm (vLLM pins its own torch).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from voxgrid.services.llm.app import LlmRuntime
from voxgrid.services.llm.assets import SHAPE_QWEN_7B, TINY_QWEN2, cache_dir
from voxgrid.services.llm.client import ChatStream, Result, assistant, system, user

from tests.llm.conftest import cancel_after_deltas, running_server, wait_idle
from tests.llm.lora import make_adapter
from voxgrid.client import channel
from voxgrid.server.chassis import ServiceServer
from voxgrid.v1 import audio_pb2, llm_pb2, llm_pb2_grpc

# The first test also starts the 7B replica (vLLM profiles memory and captures CUDA graphs): minutes, once.
pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(1800)]
Server = tuple[ServiceServer, LlmRuntime]
CONTEXT = 4096
HISTORY = [system("You are a helpful voice agent. " * 8), user("Hi!"), assistant("Hello! How can I help?")]
DONE_OK = (llm_pb2.FINISH_REASON_STOP, llm_pb2.FINISH_REASON_LENGTH)


def greedy(max_tokens: int) -> audio_pb2.SamplingParams:
    return audio_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens)


def noisy(max_tokens: int) -> audio_pb2.SamplingParams:
    """Sampling for the dummy 7B: its logits are flat, so greedy could keep picking one token that decodes to
    nothing (an unused id, or end of text at once); sampling draws ordinary text tokens, reproducibly."""
    return audio_pb2.SamplingParams(temperature=1.0, top_p=1.0, max_tokens=max_tokens, seed=7)


def built_model(name: str) -> str:
    """The cached folder of a model the main venv built; fail with the command that builds it."""
    path = cache_dir() / name
    if not (path / "config.json").exists():
        pytest.fail(f"{path} is not built: `make gpu-models` builds it with the main GPU venv "
                    "(this venv has no GGUF tokenizer source)")
    return str(path)


def require_cuda() -> None:
    """Skip outside vLLM's venv; fail where vLLM is installed but cannot reach the GPU."""
    pytest.importorskip("vllm", reason="vLLM's CUDA build lives in its own venv: make test-gpu runs these there")
    import torch

    if not torch.cuda.is_available():
        pytest.fail(f"an NVIDIA GPU is present but torch {torch.__version__} in this venv cannot use it: "
                    "run `make test-gpu` (it builds .venv-gpu-vllm with vLLM's CUDA build)")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server_7b() -> AsyncIterator[Server]:
    """One replica of the 7B shape for the module (vLLM start-up and CUDA graph capture take a while)."""
    require_cuda()
    async for pair in running_server(engine="vllm", model=built_model(SHAPE_QWEN_7B), served_model_name="qwen-7b",
                                     load_format="dummy", max_model_len=CONTEXT, gpu_memory_utilization=0.6):
        yield pair


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def channel_7b(server_7b: Server) -> AsyncIterator[Any]:
    async with channel(server_7b[0].address) as ch:
        yield ch


async def test_the_replica_describes_the_real_size_model(channel_7b: Any) -> None:
    reply = await llm_pb2_grpc.LanguageModelStub(channel_7b).ListModels(audio_pb2.ListModelsRequest())
    (model,) = reply.models
    assert model.name == "qwen-7b" and model.engine == "vllm"
    assert model.properties["context_length"] == str(CONTEXT) and model.properties["dtype"] == "bfloat16"


async def test_generate_streams_deltas_and_reports_usage(channel_7b: Any) -> None:
    async with ChatStream(channel_7b, session_id="stream") as chat:
        result = await chat.generate("r1", [*HISTORY, user("What time is it?")], noisy(24))
    done = result.done
    assert not result.errors and done is not None and done.finish_reason in DONE_OK
    assert result.deltas >= 1 and 1 <= done.completion_tokens <= 24 and done.prompt_tokens > 40
    assert 0 < done.time_to_first_token_ms <= done.total_ms


async def test_prewarm_then_generate_reuses_the_cached_prefix(channel_7b: Any) -> None:
    # A prefix no other test sends, so only the prewarm can have put it in the cache.
    persona = [system("You take bookings for Trattoria Lucia, 12 Harbour Street, open noon to eleven. " * 4)]
    async with ChatStream(channel_7b, session_id="warm") as chat:
        prewarmed = await chat.prewarm([*persona, user("Can I book a table for")])
        assert prewarmed is not None and prewarmed.WhichOneof("event") == "prewarmed"
        result = await chat.generate("r", [*persona, user("Can I book a table for two tonight?")], noisy(4))
    assert result.done is not None and result.done.finish_reason in DONE_OK
    # vLLM caches whole 16-token blocks: everything up to the last full block of the shared prefix.
    assert result.done.cached_prompt_tokens >= 32, result.done


async def test_cancel_mid_generation_ends_it_and_the_stream_goes_on(channel_7b: Any, server_7b: Server) -> None:
    async with ChatStream(channel_7b, session_id="cancel") as chat:
        story = [*HISTORY, user("Tell me a very long story.")]
        cancelled = await cancel_after_deltas(chat, "long", story, noisy(3000), deltas=2)
        after = await chat.generate("after", [*HISTORY, user("Still there?")], noisy(3))
    assert cancelled.done is not None and cancelled.done.finish_reason == llm_pb2.FINISH_REASON_CANCELLED
    assert 2 <= cancelled.done.completion_tokens < 3000
    assert after.done is not None and after.done.finish_reason in DONE_OK
    await wait_idle(server_7b[1])


async def test_many_concurrent_sessions_are_batched_and_all_finish(channel_7b: Any, server_7b: Server) -> None:
    async def one(index: int) -> Result:
        async with ChatStream(channel_7b, session_id=f"many-{index}") as chat:
            return await chat.generate("q", [*HISTORY, user(f"Question number {index}?")], noisy(16))

    results = await asyncio.gather(*(one(i) for i in range(32)))
    assert all(r.done is not None and r.done.finish_reason in DONE_OK and not r.errors for r in results)
    assert sum(r.done.completion_tokens for r in results if r.done) >= 32
    await wait_idle(server_7b[1])


async def test_prompt_over_max_model_len_is_refused_on_that_request_only(channel_7b: Any) -> None:
    async with ChatStream(channel_7b, session_id="overflow") as chat:
        too_long = await chat.generate("long", [user("word " * (CONTEXT + 100))], noisy(4))
        fine = await chat.generate("fine", [*HISTORY, user("Short one.")], noisy(2))
    assert [e.code for e in too_long.errors] == [grpc.StatusCode.INVALID_ARGUMENT.value[0]]
    assert str(CONTEXT) in too_long.errors[0].message
    assert fine.done is not None and fine.done.finish_reason in DONE_OK


# --- LoRA -------------------------------------------------------------------------------------------------


def build_lora_base(out: Path) -> Path:
    """A random Qwen2 vLLM's GPU kernels take (head size 64) with the real tokenizer; logits made peaky
    (large init) so greedy choices do not hinge on rounding differences between batch shapes."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(built_model(TINY_QWEN2))
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, initializer_range=0.5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


async def answer(ch: Any, adapter: str, session: str) -> list[str]:
    async with ChatStream(ch, session_id=session, adapter=adapter) as chat:
        result = await chat.generate("q", [user("Tell me about the weather in Rome.")], greedy(12))
    assert not result.errors and result.done is not None and result.done.completion_tokens > 0, result.errors
    return [result.text, str(result.done.completion_tokens)]


async def test_two_lora_adapters_batched_together_each_answer_as_alone(tmp_path: Path) -> None:
    require_cuda()
    import torch
    from transformers import AutoModelForCausalLM

    base = build_lora_base(tmp_path / "base")
    adapters = {
        name: make_adapter(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), tmp_path / name, seed,
                           str(base))
        for name, seed in (("support", 1), ("sales", 2))
    }
    replica = running_server(
        engine="vllm", model=str(base), max_model_len=1024, gpu_memory_utilization=0.2, max_lora_rank=8,
        lora_adapters=",".join(f"{name}={path}" for name, path in adapters.items()),
    )
    async with contextlib.aclosing(replica) as replicas:
        server, runtime = await anext(replicas)
        assert set(runtime.engine.adapters()) == {"support", "sales"}
        async with channel(server.address) as ch:
            alone = {name: await answer(ch, name, f"alone-{name}") for name in ("support", "sales", "")}
            together = await asyncio.gather(*(answer(ch, name, f"together-{name}") for name in ("support", "sales")))
        assert together == [alone["support"], alone["sales"]]
        assert alone["support"] != alone["sales"] != alone[""]  # each adapter changes what the model says
