"""LoRA adapters on the transformers engine over loopback gRPC: found in adapters_dir at start, checked against
the model, several loaded through peft; sessions on different adapters batched together each get exactly what
their adapter gives alone (tiny random Qwen2, random adapters made with peft on the spot)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from voxgrid.services.llm.adapters import AdapterError
from voxgrid.services.llm.app import LlmRuntime
from voxgrid.services.llm.assets import TINY_QWEN2, resolve_model
from voxgrid.services.llm.client import ChatStream, assistant, system, user

from tests.llm.conftest import llm_settings, running_server
from tests.llm.lora import make_adapter
from voxgrid.client import channel
from voxgrid.v1 import audio_pb2, llm_pb2_grpc

pytest.importorskip("peft")
pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
HISTORY = [system("You are a helpful voice agent."), user("Hi!"), assistant("Hello! How can I help?")]
GREEDY = audio_pb2.SamplingParams(temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    for name, seed in (("support", 1), ("sales", 2)):
        model = AutoModelForCausalLM.from_pretrained(resolve_model(TINY_QWEN2), dtype=torch.float32)
        make_adapter(model, root / name, seed, TINY_QWEN2)
    return root


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def lora_server(adapters_dir: Path) -> AsyncIterator[tuple[Any, LlmRuntime]]:
    """float32, so batched and alone decode to the same greedy tokens (bf16 rounding flips random near-ties)."""
    async for server, runtime in running_server(adapters_dir=adapters_dir, dtype="float32", max_model_len=512,
                                                max_running=4, max_requests_per_stream=3, prefill_chunk_tokens=0):
        async with channel(server.address) as ch:
            yield ch, runtime


async def answer(ch: Any, question: str, adapter: str, session: str = "") -> str:
    async with ChatStream(ch, session_id=session, adapter=adapter) as chat:
        result = await chat.generate("q", [*HISTORY, user(question)], GREEDY)
    assert not result.errors and result.done is not None, result.errors
    return result.text


async def test_sessions_on_different_adapters_batched_together_each_get_what_they_get_alone(
    lora_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voxgrid.services.llm.engines import transformers_engine

    ch, runtime = lora_server
    question = "Where is my order?"
    alone = {name: await answer(ch, question, name) for name in ("support", "sales", "")}
    assert len(set(alone.values())) == 3  # each adapter changes what the model says
    mixed: list[list[str]] = []  # the adapters of each batched step (the real step runs; this only watches)
    real = transformers_engine.batched_decode_step

    def watched(*args: Any, **kw: Any) -> Any:
        mixed.append(list(runtime.engine._routing.rows or []))
        return real(*args, **kw)

    monkeypatch.setattr(transformers_engine, "batched_decode_step", watched)
    names = ["support", "sales", "", "support"]
    together = await asyncio.gather(*(answer(ch, question, n, session=f"s{i}") for i, n in enumerate(names)))
    assert together == [alone[n] for n in names]
    assert any(len(set(step)) >= 2 for step in mixed), mixed  # rows of different adapters in one forward


async def test_base_rows_with_adapters_loaded_equal_the_model_served_without_adapters(lora_server) -> None:
    """Alone, batched with each other, and batched with rows on adapters: the base model's answer is the one a
    replica without adapters gives (the LoRA layers are off, or skip those rows, and change nothing else)."""
    ch, _ = lora_server
    question = "Do you ship abroad?"
    async for _server, _ in running_server(dtype="float32", max_model_len=512, max_running=4,
                                           prefill_chunk_tokens=0):
        async with channel(_server.address) as plain:
            without = await answer(plain, question, "")
    names = ["", "support", "", "sales"]
    together = await asyncio.gather(*(answer(ch, question, n, session=f"b{i}") for i, n in enumerate(names)))
    both_base = await asyncio.gather(*(answer(ch, question, "", session=f"c{i}") for i in range(2)))
    assert await answer(ch, question, "") == without
    assert [together[0], together[2], *both_base] == [without] * 4


async def test_the_routing_gives_each_row_what_its_adapter_gives_alone(adapters_dir: Path) -> None:
    """Logits, not just greedy tokens: the base route equals the plain model, and the one-adapter route and
    the mixed route equal peft's own per-row route (`adapter_names` on the peft model, no routing)."""
    import torch
    from transformers import AutoModelForCausalLM
    from voxgrid.services.llm.adapters import check_adapters, discover, load_peft
    from voxgrid.services.llm.engines.adapter_routing import AdapterRouting

    path = resolve_model(TINY_QWEN2)
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    specs = check_adapters(discover(adapters_dir), plain.config, TINY_QWEN2)
    peft_own = load_peft(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), specs)
    routing = AdapterRouting(load_peft(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), specs))
    model, ids = routing.model.get_base_model(), torch.randint(0, 100, (2, 9))

    def logits(net: Any, **kw: Any) -> torch.Tensor:
        with torch.inference_mode():
            return net(input_ids=ids, **kw).logits

    routing.use(["", ""])
    assert torch.equal(logits(model), logits(plain))
    routing.use(["sales", "sales"])
    alone = logits(model)
    routing.use(["support", ""])
    mixed = logits(model)
    assert torch.allclose(alone, logits(peft_own, adapter_names=["sales", "sales"]), atol=1e-5)
    assert torch.allclose(mixed, logits(peft_own, adapter_names=["support", "__base__"]), atol=1e-5)
    assert torch.equal(mixed[1], logits(plain)[1])  # a base row next to an adapter row: the plain model's
    assert not torch.allclose(alone, logits(plain), atol=1e-3)  # the adapter does change the logits


async def test_a_prewarm_is_computed_through_the_sessions_adapter(lora_server) -> None:
    ch, _ = lora_server
    question = "Can I change the address?"
    alone = await answer(ch, question, "sales")
    async with ChatStream(ch, session_id="warm", adapter="sales") as chat:
        assert (await chat.prewarm([*HISTORY, user(question)])) is not None
        warmed = await chat.generate("q", [*HISTORY, user(question)], GREEDY)
    assert warmed.text == alone and warmed.done is not None and warmed.done.cached_prompt_tokens > 0


async def test_list_models_lists_the_adapters_found_at_start(lora_server) -> None:
    ch, _ = lora_server
    (model,) = (await llm_pb2_grpc.LanguageModelStub(ch).ListModels(audio_pb2.ListModelsRequest())).models
    assert [(a.name, a.rank, a.base_model) for a in model.adapters] == [("sales", 8, TINY_QWEN2),
                                                                       ("support", 8, TINY_QWEN2)]


async def test_an_adapter_made_for_another_model_stops_the_replica_at_start(tmp_path: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    other = Qwen2ForCausalLM(Qwen2Config(vocab_size=512, hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                                         num_attention_heads=3, num_key_value_heads=1))
    make_adapter(other, tmp_path / "legal", 3, "a-96-wide-qwen2")
    runtime = LlmRuntime(llm_settings(adapters_dir=tmp_path, dtype="float32"))
    with pytest.raises(AdapterError, match=r"adapter 'legal' .*a-96-wide-qwen2"):
        await runtime.start()
