"""Settings of the LLM service: every knob of both engines, one home (env VOXGRID_LLM_*, flags, Helm)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict
from voxgrid.services.llm.assets import QWEN_05B

from voxgrid.config import ServerSettings


class LlmSettings(ServerSettings):
    model_config = ServerSettings.model_config | SettingsConfigDict(env_prefix="VOXGRID_LLM_")

    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="`transformers` (CPU, local default) or `vllm` (GPU, extra llm-vllm)."
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
    torch_threads: int = Field(0, ge=0, description="transformers engine: torch CPU threads; 0 = torch default.")
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
        "", description="vllm: adapters as `name=path,name2=path2`; clients pick one by name in ChatConfig."
    )
    enforce_eager: bool = Field(False, description="vllm: skip CUDA graph capture (faster start, slower steps).")

    @property
    def model_name(self) -> str:
        """The name clients use for this replica's model."""
        return self.served_model_name or self.model

    def adapter_paths(self) -> dict[str, str]:
        """`lora_adapters` parsed into {name: path}."""
        pairs = [item.split("=", 1) for item in self.lora_adapters.split(",") if item.strip()]
        bad = [p[0] for p in pairs if len(p) != 2 or not p[0].strip() or not p[1].strip()]
        if bad:
            raise ValueError(f"lora_adapters entries must look like name=path, got {bad}")
        return {name.strip(): path.strip() for name, path in pairs}
