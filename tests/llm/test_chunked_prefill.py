"""Chunked prefill in the transformers engine (tiny random Qwen2): same tokens as a whole-prompt prefill,
and a long prompt's prefill no longer holds up a short neighbour's first token (by step order, not time)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from voxgrid.services.llm.engines.base import Finished, GenerationRequest, Message, Sampling, TextDelta
from voxgrid.services.llm.engines.transformers_engine import TransformersEngine

from tests.llm.conftest import llm_settings

pytestmark = pytest.mark.asyncio

LONG = (Message("system", "You read the whole document before answering. " + "The river bends north. " * 60),
        Message("user", "Summarise the document."))
SHORT = (Message("user", "Hi"),)
GREEDY = Sampling(temperature=0, max_tokens=16)


def engine(chunk: int, solo_chunk: int | None = None) -> TransformersEngine:
    """Chunks of `chunk` tokens beside other requests and, unless told otherwise, alone too."""
    return TransformersEngine(llm_settings(dtype="float32", prefill_chunk_tokens=chunk, max_running=2,
                                           prefill_solo_chunk_tokens=chunk if solo_chunk is None else solo_chunk,
                                           max_model_len=1024))


def request(rid: str, messages: tuple[Message, ...], session: str = "") -> GenerationRequest:
    return GenerationRequest(request_id=rid, session_id=session or rid, messages=messages, sampling=GREEDY)


async def text_of(eng: TransformersEngine, req: GenerationRequest) -> tuple[str, Finished]:
    text = ""
    async for event in eng.submit(req):
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, Finished):
            return text, event
    raise AssertionError("no Finished event")


async def test_chunked_prefill_gives_the_same_tokens_as_a_whole_prompt_prefill(tiny_model_path: str) -> None:
    """Whole prompt, 16-token and 7-token chunks, and chunks after a prewarmed prefix: one answer."""
    answers: dict[str, str] = {}
    for chunk in (0, 16, 7):
        eng = engine(chunk)
        await eng.start()
        try:
            answers[f"cold/{chunk}"], done = await text_of(eng, request("cold", LONG))
            assert done.prompt_tokens > 300 and done.cached_prompt_tokens == 0
            # The prefix cache still works with chunks: a prewarm of most of the prompt (itself in chunks)
            # leaves only the tail to compute, and the answer does not change.
            await eng.prewarm("warm", (LONG[0], Message("user", "Summarise")))
            answers[f"warm/{chunk}"], warm = await text_of(eng, request("warm", LONG))
            assert warm.cached_prompt_tokens > 300
        finally:
            await eng.stop()
    assert len(set(answers.values())) == 1, answers
    assert answers["cold/0"]


@pytest.mark.parametrize("chunk", [0, 16])
async def test_a_long_prompt_does_not_hold_up_a_short_neighbours_first_token(tiny_model_path: str,
                                                                             chunk: int) -> None:
    """Both arrive together, the long one first. Whole-prompt prefill (chunk 0) computes all of the long
    prompt before the short one's first token; chunked prefill interleaves them, so the short request has
    its first tokens while the long prompt is still being read."""
    eng = engine(chunk)
    await eng.start()
    order: list[str] = []  # request id of every token, in the worker's order
    on_token = eng._on_token

    def spy(active: Any, token: int) -> None:
        order.append(active.handle.request_id)
        on_token(active, token)

    eng._on_token = spy  # type: ignore[method-assign]
    try:
        with eng._cond:  # the worker cannot admit one before the other is queued
            long_handle = eng.submit(request("long", LONG))
            short_handle = eng.submit(request("short", SHORT))
        for handle in (long_handle, short_handle):
            async for event in handle:
                if isinstance(event, Finished):
                    assert event.completion_tokens > 0
    finally:
        await eng.stop()
    first_long, first_short = order.index("long"), order.index("short")
    if chunk == 0:
        assert first_long < first_short
    else:
        # The short request decodes several tokens before the long one's prefill is over.
        assert first_short < first_long and order[:first_long].count("short") >= 5


async def test_a_prompt_alone_is_read_in_larger_chunks(tiny_model_path: str) -> None:
    """Every worker step has a fixed cost, so a prompt with nobody else waiting goes in solo-size chunks;
    once a neighbour is running, the same engine switches to the small chunks that interleave with it."""
    eng = engine(16, solo_chunk=128)
    await eng.start()
    steps: list[tuple[int, bool]] = []  # (chunk tokens, contended) of every prefill step
    chunk_end = eng._chunk_end

    def spy(prefilled: int, total: int, contended: bool) -> int:
        end = chunk_end(prefilled, total, contended)
        steps.append((end - prefilled, contended))
        return end

    eng._chunk_end = spy  # type: ignore[method-assign]
    try:
        _, done = await text_of(eng, request("alone", LONG))
        assert not any(contended for _, contended in steps)
        sizes = [size for size, _ in steps]
        assert sizes[:-1] == [128] * (len(sizes) - 1) and sum(sizes) == done.prompt_tokens
        steps.clear()
        with eng._cond:  # both queued before the worker admits either
            handles = [eng.submit(request("long", LONG, session="s2")), eng.submit(request("short", SHORT))]
        for handle in handles:
            async for _ in handle:
                pass
        assert steps[0] == (16, True), steps[:3]
    finally:
        await eng.stop()


async def test_a_prewarm_whose_caller_went_away_costs_no_more_steps(tiny_model_path: str) -> None:
    """A prewarm now spans many worker steps; once the stream that asked for it is gone (its future
    cancelled), the worker drops it instead of reading the rest of the prompt for nobody."""
    eng = engine(16)
    await eng.start()
    forwards: list[int] = []
    forward = eng._forward

    def spy(ids: Any, past: Any) -> Any:
        forwards.append(int(ids.numel()))
        return forward(ids, past)

    eng._forward = spy  # type: ignore[method-assign]
    try:
        with eng._cond:  # queued but not started when its caller gives up (the lock is re-entrant)
            task = asyncio.create_task(eng.prewarm("gone", LONG))
            await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for _ in range(200):
            if not eng._prewarms:
                break
            await asyncio.sleep(0.01)
        assert not eng._prewarms and forwards == []
        # The engine goes on serving, and nothing of the dropped prewarm was cached.
        _, done = await text_of(eng, request("next", LONG, session="gone"))
        assert done.cached_prompt_tokens == 0
    finally:
        await eng.stop()
