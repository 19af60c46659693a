"""The transformers engine with the tiny random Qwen2 model: prefix cache, cancel, fairness, limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from voxgrid.services.llm.engines.base import (
    INVALID_ARGUMENT,
    RESOURCE_EXHAUSTED,
    Finished,
    FinishReason,
    GenerationHandle,
    GenerationRequest,
    Message,
    RequestError,
    RequestFailed,
    Sampling,
    TextDelta,
)
from voxgrid.services.llm.engines.transformers_engine import TransformersEngine

from tests.llm.conftest import llm_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUESTION = (Message("system", "You are terse."), Message("user", "Name three rivers in France."))
GREEDY = Sampling(temperature=0, max_tokens=12)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def engine() -> AsyncIterator[TransformersEngine]:
    eng = TransformersEngine(llm_settings(max_running=2, max_waiting=2, max_model_len=256))
    await eng.start()
    yield eng
    await eng.stop()


async def drain(handle: GenerationHandle) -> tuple[str, list[object], Finished]:
    text, events = "", []
    async for event in handle:
        events.append(event)
        if isinstance(event, TextDelta):
            text += event.text
    assert isinstance(events[-1], Finished)
    return text, events, events[-1]


def request(rid: str, session: str = "s", messages: tuple[Message, ...] = QUESTION,
            sampling: Sampling = GREEDY) -> GenerationRequest:
    return GenerationRequest(request_id=rid, session_id=session, messages=messages, sampling=sampling)


async def test_prewarmed_prefix_is_reused_and_gives_the_same_tokens(engine: TransformersEngine) -> None:
    cold_text, _, cold = await drain(engine.submit(request("cold", session="cold")))
    partial = (QUESTION[0], Message("user", "Name three rivers"))
    warm = await engine.prewarm("warm", partial)
    assert warm.prompt_tokens > 0
    warm_text, _, done = await drain(engine.submit(request("warm", session="warm")))
    assert cold.cached_prompt_tokens == 0
    assert 0 < done.cached_prompt_tokens < done.prompt_tokens
    assert warm_text == cold_text and done.completion_tokens == cold.completion_tokens


async def test_cache_is_per_session_and_dropped_with_the_session(engine: TransformersEngine) -> None:
    await engine.prewarm("mine", QUESTION)
    _, _, other = await drain(engine.submit(request("x", session="theirs")))
    assert other.cached_prompt_tokens == 0
    engine.end_session("mine")
    _, _, mine = await drain(engine.submit(request("y", session="mine")))
    assert mine.cached_prompt_tokens == 0


async def test_cancel_mid_generation_finishes_cancelled_and_frees_the_slot(engine: TransformersEngine) -> None:
    handle = engine.submit(request("long", sampling=Sampling(temperature=0, max_tokens=5000)))
    deltas = 0
    async for event in handle:
        if isinstance(event, TextDelta):
            deltas += 1
            if deltas == 3:
                handle.cancel()
        if isinstance(event, Finished):
            assert event.reason == FinishReason.CANCELLED
            # Tokens already computed when the cancel arrived may still be in flight, but not many.
            assert event.completion_tokens < 40
    assert engine.running == 0


async def test_two_requests_interleave_token_steps(engine: TransformersEngine) -> None:
    long_a = engine.submit(request("a", session="a", sampling=Sampling(temperature=0, max_tokens=60)))
    long_b = engine.submit(request("b", session="b", sampling=Sampling(temperature=0, max_tokens=60)))
    order: list[str] = []

    async def watch(name: str, handle: GenerationHandle) -> None:
        async for event in handle:
            order.append(name if not isinstance(event, Finished) else name.upper())

    await asyncio.gather(watch("a", long_a), watch("b", long_b))
    # b's first token arrives long before a finishes: round-robin, not one request after the other.
    assert order.index("b") < order.index("A")


async def test_queue_full_is_resource_exhausted_and_queued_cancel_is_immediate(engine: TransformersEngine) -> None:
    big = Sampling(temperature=0, max_tokens=5000)
    handles = [engine.submit(request(f"q{i}", session=f"q{i}", sampling=big)) for i in range(5)]
    _, events, done = await drain(handles[4])  # 2 running + 2 waiting: the 5th is refused
    assert isinstance(events[0], RequestFailed) and events[0].code == RESOURCE_EXHAUSTED
    assert "queue is full" in events[0].message and done.reason == FinishReason.ERROR
    handles[3].cancel()  # still waiting: cancelled without touching the model
    _, _, waiting_done = await drain(handles[3])
    assert waiting_done.reason == FinishReason.CANCELLED and waiting_done.completion_tokens == 0
    for h in handles[:3]:
        h.cancel()
    for h in handles[:3]:
        assert (await drain(h))[2].reason == FinishReason.CANCELLED
    assert engine.running == 0 and engine.waiting == 0


async def test_prompt_longer_than_context_names_both_numbers(engine: TransformersEngine) -> None:
    huge = (Message("user", "word " * 400),)
    _, events, done = await drain(engine.submit(request("big", messages=huge)))
    failure = events[0]
    assert isinstance(failure, RequestFailed) and failure.code == INVALID_ARGUMENT
    assert "context window" in failure.message and "256" in failure.message
    assert str(done.prompt_tokens) in failure.message and done.reason == FinishReason.ERROR
    with pytest.raises(RequestError, match="256 tokens"):
        await engine.prewarm("s", huge)


async def test_length_finish_and_stop_strings(engine: TransformersEngine) -> None:
    text, _, done = await drain(engine.submit(request("len", sampling=Sampling(temperature=0, max_tokens=7))))
    assert done.reason == FinishReason.LENGTH and done.completion_tokens == 7
    stop_at = text[len(text) // 2 :][:3]
    if stop_at.strip():
        stopped, _, sdone = await drain(engine.submit(GenerationRequest(
            "stop", "s2", QUESTION, Sampling(temperature=0, max_tokens=7), stop=(stop_at,))))
        assert sdone.reason == FinishReason.STOP and stop_at not in stopped and text.startswith(stopped)


async def test_batched_decode_gives_each_request_what_it_gets_alone(tiny_model_path: str) -> None:
    """Three prompts of different lengths decoded together (left-padded batch) = decoded one by one."""
    prompts = [
        (Message("user", "Hi"),),
        (Message("system", "You are a pirate. " * 5), Message("user", "Where is the treasure?")),
        QUESTION,
    ]
    outputs = {}
    for batch in (True, False):
        eng = TransformersEngine(llm_settings(dtype="float32", batch_decode=batch, max_running=3))
        await eng.start()
        try:
            handles = [eng.submit(request(f"p{i}", session=f"b{batch}{i}", messages=m,
                                          sampling=Sampling(temperature=0, max_tokens=20)))
                       for i, m in enumerate(prompts)]
            outputs[batch] = [(await drain(h))[0] for h in handles]
        finally:
            await eng.stop()
    assert outputs[True] == outputs[False]
    assert len(set(outputs[True])) == 3
