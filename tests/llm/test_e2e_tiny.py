"""LLM service over loopback gRPC with the tiny random-weight Qwen2: streaming, cancel, prewarm, bad input."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from typing import Any

import grpc
import pytest
from voxgrid.services.llm.app import LlmRuntime
from voxgrid.services.llm.client import ChatStream, assistant, system, user

from tests.llm.conftest import cancel_after_deltas, wait_idle
from voxgrid.client import channel
from voxgrid.errors import parse_error
from voxgrid.server.chassis import ServiceServer
from voxgrid.v1 import audio_pb2, llm_pb2, llm_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

Server = tuple[ServiceServer, LlmRuntime]
HISTORY = [
    system("You are a helpful voice agent. Keep answers short."), user("Hi!"), assistant("Hello! How can I help?"),
]
ENDLESS = audio_pb2.SamplingParams(temperature=0.0, max_tokens=4000)


def short(n: int = 8) -> audio_pb2.SamplingParams:
    return audio_pb2.SamplingParams(temperature=0.0, max_tokens=n)


async def test_list_models_describes_the_served_model(tiny_channel: Any) -> None:
    reply = await llm_pb2_grpc.LanguageModelStub(tiny_channel).ListModels(audio_pb2.ListModelsRequest())
    (model,) = reply.models
    assert model.name == "tiny-random-qwen2" and model.engine == "transformers"
    assert model.properties["context_length"] == "512"


async def test_generate_streams_deltas_then_one_done_with_usage(tiny_channel: Any) -> None:
    async with ChatStream(tiny_channel, session_id="stream") as chat:
        result = await chat.generate("r1", [*HISTORY, user("What time is it?")], short(10))
    assert result.deltas >= 2 and result.text and not result.errors
    done = result.done
    assert done is not None and done.finish_reason == llm_pb2.FINISH_REASON_LENGTH
    assert done.completion_tokens == 10 and done.prompt_tokens > 20
    assert 0 < done.time_to_first_token_ms <= done.total_ms and done.queue_ms >= 0


async def test_cancel_mid_stream_ends_with_cancelled_and_the_stream_goes_on(
    tiny_channel: Any, tiny_server: Server
) -> None:
    async with ChatStream(tiny_channel) as chat:
        result = await cancel_after_deltas(chat, "long", [user("Tell me everything.")], ENDLESS, deltas=3)
        assert result.done is not None and result.done.finish_reason == llm_pb2.FINISH_REASON_CANCELLED
        assert result.done.completion_tokens < 4000
        await wait_idle(tiny_server[1])
        again = await chat.generate("next", [user("Still there?")], short(3))
        assert again.done is not None and again.done.finish_reason == llm_pb2.FINISH_REASON_LENGTH


async def test_prewarm_then_generate_reuses_the_cached_prefix(tiny_channel: Any) -> None:
    async with ChatStream(tiny_channel, session_id="prewarm-e2e") as chat:
        cold = await chat.generate("cold", [*HISTORY, user("Book a table for two tonight")], short(6))
        prewarmed = await chat.prewarm([*HISTORY, user("Book a table for")])
        assert prewarmed is not None and prewarmed.WhichOneof("event") == "prewarmed"
        assert prewarmed.prewarmed.prompt_tokens > 20
        warm = await chat.generate("warm", [*HISTORY, user("Book a table for four at eight")], short(6))
    assert warm.done is not None and cold.done is not None
    assert warm.done.cached_prompt_tokens >= prewarmed.prewarmed.prompt_tokens - 8
    assert warm.done.cached_prompt_tokens < warm.done.prompt_tokens


async def test_concurrent_requests_on_one_stream_interleave_and_each_gets_one_done(tiny_channel: Any) -> None:
    async with ChatStream(tiny_channel) as chat:
        queues = {rid: chat.start(rid, [user(f"Question {rid}")], short(15)) for rid in ("a", "b", "c")}
        results = await asyncio.gather(*(chat.collect(q) for q in queues.values()))
    assert all(r.done is not None and r.done.completion_tokens == 15 for r in results)
    # 2 engine slots, 3 requests: one of them waited for a slot.
    assert max(r.done.queue_ms for r in results if r.done) > 0.5


async def test_bad_requests_get_request_errors_and_the_stream_survives(tiny_channel: Any) -> None:
    async with ChatStream(tiny_channel) as chat:
        empty = await chat.generate("empty", [])
        unknown_role = await chat.generate("role", [llm_pb2.ChatMessage(role=llm_pb2.ROLE_UNSPECIFIED, content="x")])
        too_long = await chat.generate("long", [user("word " * 600)])
        bad_sampling = await chat.generate("samp", [user("x")], audio_pb2.SamplingParams(temperature=3.5, top_p=0))
        bad_tool = await chat.generate("tool", [user("x")], tools=[audio_pb2.ToolSchema(name="bad name!")])
        bad_prewarm = await chat.prewarm([])
        ok = await chat.generate("fine", [user("Still fine?")], short(2))
    assert bad_prewarm is not None and bad_prewarm.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "messages` is empty" in bad_prewarm.error.message
    for result, code, words in [
        (empty, grpc.StatusCode.INVALID_ARGUMENT, "messages` is empty"),
        (unknown_role, grpc.StatusCode.INVALID_ARGUMENT, "ROLE_UNSPECIFIED"),
        (too_long, grpc.StatusCode.INVALID_ARGUMENT, "context window"),
        (bad_sampling, grpc.StatusCode.INVALID_ARGUMENT, "temperature must be in [0, 2]"),
        (bad_tool, grpc.StatusCode.INVALID_ARGUMENT, "tools[0].name"),
    ]:
        assert [e.code for e in result.errors] == [code.value[0]], words
        assert words in result.errors[0].message
        assert result.done is not None and result.done.finish_reason == llm_pb2.FINISH_REASON_ERROR
    assert "512" in too_long.errors[0].message and str(too_long.done.prompt_tokens) in too_long.errors[0].message
    assert "top_p" in bad_sampling.errors[0].message
    assert ok.done is not None and ok.done.finish_reason == llm_pb2.FINISH_REASON_LENGTH


async def test_cancel_of_unknown_id_is_not_found(tiny_channel: Any) -> None:
    async with ChatStream(tiny_channel) as chat:
        queue = chat.start("ghost", [user("x")], short(1))
        await chat.collect(queue)  # finished: its id is no longer live
        chat.cancel("ghost")
        response = await asyncio.wait_for(queue.get(), 10)
    assert response.error.code == grpc.StatusCode.NOT_FOUND.value[0] and "ghost" in response.error.message


async def test_too_many_concurrent_requests_on_a_stream_is_resource_exhausted(tiny_channel: Any) -> None:
    async with ChatStream(tiny_channel) as chat:
        queues = [chat.start(f"r{i}", [user("Go on")], ENDLESS) for i in range(4)]
        refused = await chat.collect(queues[3])
        assert [e.code for e in refused.errors] == [grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]]
        assert "limit 3" in refused.errors[0].message
        # Reusing a live id is refused without a `done` (that would end the live r0 for the client).
        chat.send(llm_pb2.ChatRequest(generate=llm_pb2.GenerateRequest(request_id="r0", messages=[user("again")])))
        await asyncio.sleep(0.2)
        for i in range(3):
            chat.cancel(f"r{i}")
        results = [await chat.collect(q) for q in queues[:3]]
    assert [e.message for e in results[0].errors] == ["request_id 'r0' is already running on this stream: use a new id"]
    assert [r.done.finish_reason for r in results if r.done] == [llm_pb2.FINISH_REASON_CANCELLED] * 3


async def test_stream_level_errors_close_with_invalid_argument(tiny_channel: Any) -> None:
    stub = llm_pb2_grpc.LanguageModelStub(tiny_channel)

    async def first(*requests: llm_pb2.ChatRequest) -> grpc.aio.AioRpcError:
        call = stub.Chat(iter(requests))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        return info.value

    gen = llm_pb2.ChatRequest(generate=llm_pb2.GenerateRequest(request_id="x", messages=[user("hi")]))
    err = await first(gen)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "first message must carry `config`" in err.details()
    err = await first(llm_pb2.ChatRequest(config=llm_pb2.ChatConfig(model="gpt-9")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "tiny-random-qwen2" in err.details()
    assert parse_error(err).fields == ["config.model"] and parse_error(err).reason == "INVALID_CONFIG"
    err = await first(llm_pb2.ChatRequest(config=llm_pb2.ChatConfig(adapter="support")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "adapter" in err.details()
    config = llm_pb2.ChatRequest(config=llm_pb2.ChatConfig())
    err = await first(config, config)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "only be the first message" in err.details()


async def test_client_gone_mid_generation_frees_the_engine(tiny_server: Server) -> None:
    server, runtime = tiny_server
    cancellations = runtime.engine.metrics.cancellations._value.get()
    async with channel(server.address) as ch:
        chat = ChatStream(ch, session_id="vanishing")
        await chat.__aenter__()
        for queue in (chat.start("a", [user("Talk forever")], ENDLESS), chat.start("b", [user("Me too")], ENDLESS)):
            first = await asyncio.wait_for(queue.get(), 30)
            assert first.WhichOneof("event") == "delta"
        assert runtime.engine.running == 2
        chat.abandon()
        await wait_idle(runtime)
    assert runtime.engine.metrics.cancellations._value.get() >= cancellations + 2


async def test_metrics_endpoint_exports_llm_latencies(tiny_channel: Any, tiny_server: Server) -> None:
    async with ChatStream(tiny_channel) as chat:
        await chat.generate("m", [user("metrics please")], short(3))
    url = tiny_server[0].metrics_url
    assert url is not None
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    for name in ("voxgrid_llm_time_to_first_token_seconds_count", "voxgrid_llm_inter_token_latency_seconds",
                 "voxgrid_llm_queue_wait_seconds", "voxgrid_llm_tokens_total", "voxgrid_llm_running_requests",
                 "voxgrid_llm_prefix_cache_hit_rate", "voxgrid_llm_cancellations_total"):
        assert name in body, name


async def test_voxgrid_generate_cli_prints_json(tiny_server: Server) -> None:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voxgrid", "generate", "Say hi", "--target", tiny_server[0].address,
        "--max-tokens", "4", "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    answer = json.loads(out)
    assert answer["finish_reason"] == "FINISH_REASON_LENGTH" and answer["completion_tokens"] == 4
    assert answer["time_to_first_token_ms"] > 0 and answer["text"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voxgrid", "generate", "Say hi", "--target", tiny_server[0].address,
        "--max-tokens", "4", "--system", "Be brief.", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0 and out.decode() and "time to first token" in err.decode()
