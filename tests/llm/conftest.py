"""Fixtures for the LLM service tests: settings, engines and loopback servers with real models."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import pytest_asyncio
from voxgrid.services.llm.app import LlmRuntime
from voxgrid.services.llm.assets import QWEN_05B, TINY_QWEN2
from voxgrid.services.llm.client import ChatStream, Result
from voxgrid.services.llm.settings import LlmSettings

from voxgrid.client import channel
from voxgrid.server.chassis import ServiceServer, start_server
from voxgrid.v1 import audio_pb2, llm_pb2


def llm_settings(**overrides: Any) -> LlmSettings:
    """Loopback settings with an ephemeral port (env vars cannot leak in: every field is explicit)."""
    base: dict[str, Any] = dict(host="127.0.0.1", port=0, metrics_port=0, model=TINY_QWEN2, torch_threads=0)
    return LlmSettings(**{**base, **overrides})


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    from voxgrid.services.llm.assets import resolve_model

    return resolve_model(TINY_QWEN2)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


async def wait_idle(runtime: LlmRuntime) -> None:
    """Wait (a few seconds at most) until the engine has nothing running or queued."""
    for _ in range(200):
        if runtime.engine.running == 0 and runtime.engine.waiting == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"engine still busy: {runtime.engine.running} running, {runtime.engine.waiting} waiting")


async def cancel_after_deltas(chat: ChatStream, request_id: str, messages: Sequence[llm_pb2.ChatMessage],
                              sampling: audio_pb2.SamplingParams, deltas: int) -> Result:
    """Generate, and cancel once `deltas` text deltas have arrived: a barge-in in the middle of an answer."""
    queue = chat.start(request_id, messages, sampling)
    seen = 0

    def on_response(response: llm_pb2.ChatResponse) -> None:
        nonlocal seen
        if response.WhichOneof("event") == "delta":
            seen += 1
            if seen == deltas:
                chat.cancel(request_id)

    return await chat.collect(queue, on_response=on_response)


async def running_server(**overrides: Any) -> AsyncIterator[tuple[ServiceServer, LlmRuntime]]:
    settings = llm_settings(**overrides)
    runtime = LlmRuntime(settings)
    async with start_server(runtime, settings) as server:
        yield server, runtime


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def tiny_server() -> AsyncIterator[tuple[ServiceServer, LlmRuntime]]:
    """One tiny-model replica shared by a test module (max 3 requests per stream, 2 running)."""
    async for pair in running_server(max_requests_per_stream=3, max_running=2, max_model_len=512):
        yield pair


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def real_server() -> AsyncIterator[tuple[ServiceServer, LlmRuntime]]:
    """The packaged Qwen2.5 0.5B instruct model behind a loopback replica."""
    async for pair in running_server(model=QWEN_05B):
        yield pair


@pytest_asyncio.fixture(loop_scope="module")
async def tiny_channel(tiny_server: tuple[ServiceServer, LlmRuntime]) -> AsyncIterator[Any]:
    async with channel(tiny_server[0].address) as ch:
        yield ch
