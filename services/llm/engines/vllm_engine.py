"""The GPU engine: vLLM's `AsyncLLM` in-process (its engine core runs in its own process).

vLLM schedules and batches every request itself (continuous batching, prefix caching, chunked
prefill); this module only renders prompts with the shared chat layer, submits, relays outputs and
aborts. vLLM is the optional `llm-vllm` extra, imported lazily: nothing here needs it at import time.

The parts with logic are small pure functions so they are unit-tested without a GPU:
`engine_args(settings)`, `sampling_args(sampling, stop)` and `OutputMapper` (vLLM RequestOutput →
engine events).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from voxgrid.services.llm.assets import resolve_model
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
    TextDelta,
    ToolCallEvent,
    ToolSpec,
)
from voxgrid.services.llm.engines.transformers_engine import prompt_too_long
from voxgrid.services.llm.metrics import LlmMetrics

if TYPE_CHECKING:
    from voxgrid.services.llm.settings import LlmSettings

log = logging.getLogger(__name__)

_VLLM_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.CANCELLED}


def engine_args(settings: LlmSettings) -> dict[str, Any]:
    """Keyword arguments for `vllm.AsyncEngineArgs` from the service settings."""
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
    if settings.quantization:
        args["quantization"] = settings.quantization
    if settings.enable_lora or settings.adapter_paths():
        args.update(enable_lora=True, max_loras=settings.max_loras, max_lora_rank=settings.max_lora_rank)
    return args


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
        self._tasks: dict[GenerationHandle, asyncio.Task[None]] = {}
        self._lora: dict[str, Any] = {}

    async def start(self) -> None:
        try:
            from vllm import AsyncEngineArgs
            from vllm.lora.request import LoRARequest
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise RuntimeError(
                f"engine=vllm needs vLLM ({exc}): install the extra, pip install 'voxgrid[llm-vllm]' "
                "(it pins its own torch: use its own environment or image)"
            ) from exc
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args(self.settings)))
        tokenizer = self.engine.get_tokenizer()
        self.tokenizer = await tokenizer if asyncio.iscoroutine(tokenizer) else tokenizer
        self.context_len = int(self.engine.model_config.max_model_len)
        self._lora = {
            name: LoRARequest(name, index, path)
            for index, (name, path) in enumerate(sorted(self.settings.adapter_paths().items()), start=1)
        }

    async def stop(self) -> None:
        for handle in list(self._tasks):
            handle.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    def describe(self) -> ModelDescription:
        return ModelDescription(
            name=self.settings.model_name,
            engine=self.kind,
            properties={
                "context_length": str(self.context_len),
                "dtype": self.settings.dtype,
                "tensor_parallel_size": str(self.settings.tensor_parallel_size),
                "quantization": self.settings.quantization or "none",
                "tools": "true",
            },
        )

    def adapters(self) -> tuple[str, ...]:
        return tuple(self._lora)

    @property
    def running(self) -> int:
        return len(self._tasks)

    def _prompt_ids(self, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...], for_generate: bool) -> list[int]:
        text = render_prompt(self.tokenizer, messages, tools, add_generation_prompt=for_generate)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) >= self.context_len:
            raise RequestError(INVALID_ARGUMENT, prompt_too_long(len(ids), self.context_len, self.settings.model_name))
        return ids

    def submit(self, request: GenerationRequest) -> GenerationHandle:
        handle = GenerationHandle(request, self._on_cancel)
        task = asyncio.create_task(self._run(handle))
        self._tasks[handle] = task
        task.add_done_callback(lambda _t: self._tasks.pop(handle, None))
        return handle

    def _on_cancel(self, handle: GenerationHandle) -> None:
        task = self._tasks.get(handle)
        if task is not None:
            task.cancel()

    async def _run(self, handle: GenerationHandle) -> None:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        request = handle.request
        mapper = OutputMapper(request, self.metrics)
        engine_id = f"{request.session_id}-{request.request_id}-{uuid.uuid4().hex[:8]}"
        try:
            ids = self._prompt_ids(request.messages, request.tools, for_generate=True)
            params = SamplingParams(**sampling_args(request.sampling, request.stop),
                                    output_kind=RequestOutputKind.DELTA)
            async for output in self.engine.generate(
                {"prompt_token_ids": ids}, params, engine_id, lora_request=self._lora.get(request.adapter)
            ):
                for event in mapper.map(output):
                    handle.push(event)
        except asyncio.CancelledError:
            await self.engine.abort(engine_id)
            self.metrics.cancellations.inc()
            for event in mapper.finish(FinishReason.CANCELLED):
                handle.push(event)
        except RequestError as exc:
            handle.push(RequestFailed(exc.code, exc.message))
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
        self, session_id: str, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...] = ()
    ) -> PrewarmResult:
        """Run the prefix through the engine (one token); vLLM's prefix cache keeps its KV blocks."""
        from vllm import SamplingParams

        started = time.perf_counter()
        ids = self._prompt_ids(messages, tools, for_generate=False)
        engine_id = f"{session_id}-prewarm-{uuid.uuid4().hex[:8]}"
        try:
            async for _ in self.engine.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=1), engine_id):
                pass
        except asyncio.CancelledError:
            await self.engine.abort(engine_id)
            raise
        self.metrics.prewarms.inc()
        return PrewarmResult(len(ids), (time.perf_counter() - started) * 1e3)
