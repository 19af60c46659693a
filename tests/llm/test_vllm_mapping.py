"""vLLM engine: the pure parts (engine args, sampling args, output mapping) here; the engine on a GPU."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from voxgrid.services.llm.adapters import AdapterError, check_adapters
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
from voxgrid.services.llm.engines.vllm_engine import (
    OutputMapper,
    adapter_mismatch,
    cpu_environment,
    engine_args,
    sampling_args,
)

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


def test_engine_args_on_cpu_size_the_kv_cache_and_carry_the_scheduler_budget() -> None:
    settings = llm_settings(engine="vllm", model="Qwen/Qwen2.5-0.5B-Instruct", cpu_kv_cache_gib=0.5, block_size=32,
                            max_num_batched_tokens=256, long_prefill_token_threshold=64)
    args = engine_args(settings, cpu=True)
    assert args["kv_cache_memory_bytes"] == 2**29 and args["block_size"] == 32
    assert args["max_num_batched_tokens"] == 256 and args["long_prefill_token_threshold"] == 64
    on_gpu = engine_args(settings)
    assert "kv_cache_memory_bytes" not in on_gpu and on_gpu["block_size"] == 32
    assert not {"block_size", "max_num_batched_tokens", "long_prefill_token_threshold"} & set(
        engine_args(llm_settings(engine="vllm", model="Qwen/Qwen2.5-0.5B-Instruct")))


def test_cpu_environment_binds_threads_and_preloads_the_openmp_runtime(tmp_path: Path) -> None:
    default = cpu_environment(llm_settings(engine="vllm"))
    assert default == {"VLLM_CPU_OMP_THREADS_BIND": "auto"}
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libiomp5.so").write_bytes(b"")
    tuned = cpu_environment(llm_settings(engine="vllm", cpu_omp_threads_bind="0-1", cpu_reserved_cores=0,
                                         cpu_openmp="iomp"), prefix=str(tmp_path))
    assert tuned["VLLM_CPU_OMP_THREADS_BIND"] == "0-1" and tuned["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert tuned["LD_PRELOAD"].split(":")[0] == str(tmp_path / "lib" / "libiomp5.so")
    with pytest.raises(RuntimeError, match="intel-openmp"):
        cpu_environment(llm_settings(engine="vllm", cpu_openmp="iomp"), prefix=str(tmp_path / "elsewhere"))


def write_adapter(folder: Path, shapes: dict[str, tuple[int, int]], rank: int = 8) -> str:
    """A PEFT-layout adapter folder with zero tensors of the given shapes (only shapes are read)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "base_model_name_or_path": "some/base"}))
    save_file({name: torch.zeros(shape) for name, shape in shapes.items()}, str(folder / "adapter_model.safetensors"))
    return str(folder)


TINY = SimpleNamespace(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, intermediate_size=128,
                       num_hidden_layers=2)
PREFIX = "base_model.model.model.layers"


def test_adapter_mismatch_accepts_an_adapter_of_the_served_shape(tmp_path: Path) -> None:
    fits = write_adapter(tmp_path / "fits", {
        f"{PREFIX}.1.self_attn.q_proj.lora_A.weight": (8, 64), f"{PREFIX}.1.self_attn.q_proj.lora_B.weight": (64, 8),
        f"{PREFIX}.0.self_attn.v_proj.lora_B.weight": (32, 8), f"{PREFIX}.0.mlp.down_proj.lora_A.weight": (8, 128),
    })
    assert adapter_mismatch(fits, TINY, max_rank=16) is None


def test_adapter_mismatch_says_why_an_adapter_cannot_serve(tmp_path: Path) -> None:
    wide = write_adapter(tmp_path / "wide", {f"{PREFIX}.0.self_attn.q_proj.lora_A.weight": (8, 96)})
    assert adapter_mismatch(wide, TINY, 16) == (
        "its `q_proj` input size is 96, the served model's is 64 (it was made for some/base)")
    deep = write_adapter(tmp_path / "deep", {f"{PREFIX}.7.self_attn.q_proj.lora_A.weight": (8, 64)})
    assert "layer 7" in (adapter_mismatch(deep, TINY, 16) or "")
    gpt2 = write_adapter(tmp_path / "gpt2", {"base_model.model.transformer.h.0.attn.c_attn.lora_A.weight": (8, 64)})
    assert "`c_attn`" in (adapter_mismatch(gpt2, TINY, 16) or "")
    big = write_adapter(tmp_path / "big", {f"{PREFIX}.0.self_attn.q_proj.lora_A.weight": (64, 64)}, rank=64)
    assert "max_lora_rank 16" in (adapter_mismatch(big, TINY, 16) or "")
    assert "not a PEFT LoRA adapter" in (adapter_mismatch(str(tmp_path), TINY, 16) or "")


def test_adapters_dir_is_discovered_and_every_adapter_checked_against_the_model(tmp_path: Path) -> None:
    folder = tmp_path / "adapters"
    folder.mkdir()
    q = {f"{PREFIX}.0.self_attn.q_proj.lora_A.weight": (8, 64)}
    write_adapter(folder / "support", q)
    write_adapter(folder / "sales", q)
    (folder / "lost+found").mkdir()  # a volume's own folder: skipped
    legal = write_adapter(tmp_path / "l", q)
    settings = llm_settings(engine="vllm", adapters_dir=folder, lora_adapters=f"legal={legal}")
    paths = settings.served_adapters()
    assert sorted(paths) == ["legal", "sales", "support"] and paths["sales"] == str(folder / "sales")
    assert engine_args(settings)["enable_lora"] is True
    specs = check_adapters(paths, TINY, "tiny")
    assert [(s.name, s.rank, s.base_model) for s in specs] == [("legal", 8, "some/base"), ("sales", 8, "some/base"),
                                                               ("support", 8, "some/base")]
    write_adapter(folder / "wide", {f"{PREFIX}.0.self_attn.q_proj.lora_A.weight": (8, 96)})
    with pytest.raises(AdapterError, match=r"adapter 'wide' .*input size is 96, the served model's is 64"):
        check_adapters(llm_settings(adapters_dir=folder).served_adapters(), TINY, "tiny")
    with pytest.raises(AdapterError, match="both in adapters_dir and lora_adapters"):
        llm_settings(adapters_dir=folder, lora_adapters=f"sales={tmp_path / 'l'}").served_adapters()
    with pytest.raises(AdapterError, match="is not a folder"):
        llm_settings(adapters_dir=tmp_path / "missing").served_adapters()

