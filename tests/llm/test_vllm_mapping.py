"""vLLM engine: the pure parts (engine args, sampling args, output mapping) here; the engine on a GPU."""

from __future__ import annotations

import asyncio
import importlib.util
from types import SimpleNamespace

import pytest
from voxgrid.services.llm.assets import QWEN_05B
from voxgrid.services.llm.engines.base import (
    Finished,
    FinishReason,
    GenerationRequest,
    Message,
    Sampling,
    TextDelta,
    ToolCallEvent,
    ToolSpec,
)
from voxgrid.services.llm.engines.vllm_engine import OutputMapper, engine_args, sampling_args

from tests.llm.conftest import llm_settings


def test_engine_args_turn_on_prefix_caching_and_chunked_prefill_and_carry_every_knob() -> None:
    args = engine_args(llm_settings(
        engine="vllm", model="meta-llama/Llama-3.1-8B-Instruct", tensor_parallel_size=2,
        gpu_memory_utilization=0.8, max_model_len=8192, quantization="fp8", load_format="dummy",
        lora_adapters="support=/adapters/support,sales=/adapters/sales", max_loras=2,
    ))
    assert args["enable_prefix_caching"] is True and args["enable_chunked_prefill"] is True
    assert args["model"] == "meta-llama/Llama-3.1-8B-Instruct" and args["tensor_parallel_size"] == 2
    assert args["gpu_memory_utilization"] == 0.8 and args["max_model_len"] == 8192
    assert args["quantization"] == "fp8" and args["load_format"] == "dummy" and args["dtype"] == "bfloat16"
    assert args["enable_lora"] is True and args["max_loras"] == 2


def test_engine_args_leave_out_unset_options() -> None:
    args = engine_args(llm_settings(engine="vllm", model="Qwen/Qwen2.5-0.5B-Instruct"))
    assert "max_model_len" not in args and "quantization" not in args and "enable_lora" not in args


def test_bad_lora_adapter_list_is_reported() -> None:
    with pytest.raises(ValueError, match="name=path"):
        llm_settings(lora_adapters="justaname").adapter_paths()


def test_sampling_args_map_proto_defaults_and_options() -> None:
    args = sampling_args(Sampling(temperature=0.0, top_p=0.9, top_k=0, max_tokens=64, seed=3), ("\nUser:",))
    assert args == {"temperature": 0.0, "top_p": 0.9, "max_tokens": 64, "repetition_penalty": 1.0,
                    "stop": ["\nUser:"], "skip_special_tokens": True, "seed": 3}
    assert sampling_args(Sampling(top_k=40))["top_k"] == 40


def output(text: str, ids: list[int], finished: bool = False, reason: str | None = None,
           prompt: list[int] | None = None, cached: int = 0) -> SimpleNamespace:
    """The fields of a vLLM RequestOutput (DELTA kind) that the mapper reads."""
    return SimpleNamespace(
        prompt_token_ids=prompt, num_cached_tokens=cached, finished=finished,
        outputs=[SimpleNamespace(text=text, token_ids=ids, finish_reason=reason)],
    )


def test_output_mapper_streams_text_and_reports_usage_and_timing() -> None:
    req = GenerationRequest("r", "s", (Message("user", "hi"),), arrival=100.0)
    mapper = OutputMapper(req)
    events = mapper.map(output("Hel", [1, 2], prompt=[5] * 30, cached=16), now=100.2)
    events += mapper.map(output("lo.", [3], finished=True, reason="stop"), now=100.5)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hel", "lo."]
    done = events[-1]
    assert isinstance(done, Finished) and done.reason == FinishReason.STOP
    assert (done.prompt_tokens, done.completion_tokens, done.cached_prompt_tokens) == (30, 3, 16)
    assert done.time_to_first_token_ms == pytest.approx(200.0) and done.total_ms == pytest.approx(500.0)


def test_output_mapper_turns_tool_call_markup_into_tool_calls() -> None:
    tool = ToolSpec("get_weather", "", {"type": "object"})
    req = GenerationRequest("r", "s", (Message("user", "weather?"),), tools=(tool,))
    mapper = OutputMapper(req)
    events = mapper.map(output('<tool_call>{"name": "get_weather", ', [1], prompt=[1]))
    events += mapper.map(output('"arguments": {"city": "Rome"}}</tool_call>', [2], finished=True, reason="stop"))
    assert not [e for e in events if isinstance(e, TextDelta)]
    assert [e.call.name for e in events if isinstance(e, ToolCallEvent)] == ["get_weather"]
    assert events[-1].reason == FinishReason.TOOL_CALLS


def test_output_mapper_length_abort_and_single_finish() -> None:
    mapper = OutputMapper(GenerationRequest("r", "s", (Message("user", "x"),)))
    assert mapper.map(output("a", [1], finished=True, reason="length"))[-1].reason == FinishReason.LENGTH
    assert mapper.finish(FinishReason.CANCELLED) == []  # already finished: nothing more
    aborted = OutputMapper(GenerationRequest("r2", "s", (Message("user", "x"),)))
    assert aborted.finish(FinishReason.CANCELLED)[-1].reason == FinishReason.CANCELLED


def _cuda_and_vllm() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not _cuda_and_vllm(), reason="needs CUDA and the llm-vllm extra")
async def test_vllm_engine_generates_prewarms_and_cancels() -> None:
    from voxgrid.services.llm.engines.vllm_engine import VllmEngine

    engine = VllmEngine(llm_settings(
        engine="vllm", model=QWEN_05B, max_model_len=2048,
        gpu_memory_utilization=0.3, enforce_eager=True,
    ))
    await engine.start()
    try:
        history = (Message("system", "Be brief. " * 40), Message("user", "Tell me a long story."))
        await engine.prewarm("s", history[:1])
        answer = engine.submit(GenerationRequest("p", "s", (Message("user", "What is the capital of France?"),),
                                                 Sampling(temperature=0, max_tokens=20)))
        text = "".join([e.text async for e in answer if isinstance(e, TextDelta)])
        assert "Paris" in text
        handle = engine.submit(GenerationRequest("a", "s", history, Sampling(max_tokens=2000)))
        events = []
        async for event in handle:
            events.append(event)
            if len(events) == 5:
                handle.cancel()
        done = events[-1]
        assert isinstance(done, Finished) and done.reason == FinishReason.CANCELLED
        assert done.cached_prompt_tokens > 0
        await asyncio.sleep(0.1)
        assert engine.running == 0
    finally:
        await engine.stop()
