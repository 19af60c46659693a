"""The CPU engine: a Hugging Face causal LM driven one token step at a time by a single worker thread.

One thread owns the model. It admits queued requests up to `max_running`; each iteration it computes
at most one prompt chunk of a prewarm, one prompt chunk of one new request (round-robin) and then one
token for every request already decoding, in a single batched forward (`batch_decode`). This is vLLM's
chunked prefill: a prompt of N tokens costs N / `prefill_chunk_tokens` iterations of its own, each
followed by a decode step of everyone else, so a long prompt delays its own first token, not its
neighbours' next ones; a long answer cannot starve a new request, and a cancel is seen before the next
step. Tokens reach the event loop through each
request's `GenerationHandle` (`loop.call_soon_threadsafe`); the event loop never touches the model.

Prewarm is real: the worker computes the KV cache of the prefix and keeps it per session
(`SessionPrefixCache`); a generate reuses the longest matching token prefix, so only the new tail of
the prompt is computed before the first token. Finished turns are kept the same way, so the next turn
of a conversation starts from the cache too.

Speech-in checkpoints (hybrid mode) load by their config: any architecture transformers implements
natively with an audio encoder (Qwen2-Audio, Voxtral, ...) comes up with its `AutoProcessor` and the model
class its config names. Prompts then come from the processor's chat template, which writes the model's own
audio placeholders; the processor expands them and turns the audio windows into encoder features. A
request with audio is prefilled in one step from its first audio token on (chunked prefill is bypassed for
it: the encoder needs all of a window at once), and only the text before that token is ever cached or
reused, since identical placeholder ids stand for different audio. Prompt ids come from the checkpoint's own
processor either way (`speech_prompt.py`: a chat template, or mistral-common for Voxtral). LoRA adapters on a
speech-in model adapt its language model only (checked at load: the audio encoder has q_proj too).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from voxgrid.services.llm.adapters import AdapterSpec, check_adapters, load_peft
from voxgrid.services.llm.assets import resolve_model
from voxgrid.services.llm.audio_input import speech_input_from_processor
from voxgrid.services.llm.chat import ToolCallParser
from voxgrid.services.llm.engines.adapter_routing import AdapterRouting
from voxgrid.services.llm.engines.base import (
    INTERNAL,
    INVALID_ARGUMENT,
    RESOURCE_EXHAUSTED,
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
    SpeechInput,
    TextDelta,
    ToolCallEvent,
    ToolSpec,
)
from voxgrid.services.llm.engines.batch_decode import batched_decode_step
from voxgrid.services.llm.engines.prefix_cache import SessionPrefixCache
from voxgrid.services.llm.engines.sampling import choose_next_token
from voxgrid.services.llm.engines.text_output import IncrementalDetokenizer, StopStringMatcher
from voxgrid.services.llm.metrics import LlmMetrics
from voxgrid.services.llm.speech_prompt import PromptEncoder

if TYPE_CHECKING:
    from voxgrid.services.llm.settings import LlmSettings

log = logging.getLogger(__name__)


def prompt_too_long(prompt_tokens: int, context: int, model: str) -> str:
    return (
        f"the prompt is {prompt_tokens} tokens but the context window of {model} is {context} tokens "
        "(prompt and answer together): drop or summarise earlier messages"
    )


@dataclass
class _Active:
    """A generation the worker owns (state touched only by the worker thread)."""

    handle: GenerationHandle
    admitted: float
    prompt_ids: torch.Tensor | None = None
    past: Any = None
    prefilled: int = 0
    cached: int = 0
    max_new: int = 0
    generated: list[int] = field(default_factory=list)
    next_input: int | None = None
    first_token_at: float | None = None
    last_token_at: float = 0.0
    detokenizer: IncrementalDetokenizer | None = None
    stopper: StopStringMatcher | None = None
    parser: ToolCallParser | None = None
    generator: torch.Generator | None = None
    finished: bool = False
    audio_inputs: dict[str, torch.Tensor] | None = None  # encoder inputs, until the audio prefill step
    audio_at: int | None = None  # first audio token: nothing from here on is cached


@dataclass
class _PrewarmJob:
    session_id: str
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...]
    future: asyncio.Future[PrewarmResult]
    loop: asyncio.AbstractEventLoop
    adapter: str = ""
    arrival: float = field(default_factory=time.perf_counter)
    ids: torch.Tensor | None = None  # worker state: the prompt, its cache and how much of it is computed
    past: Any = None
    prefilled: int = 0


class TransformersEngine(LlmEngine):
    kind = "transformers"

    def __init__(self, settings: LlmSettings) -> None:
        self.settings = settings
        self.metrics = LlmMetrics()
        self.prefix_cache = SessionPrefixCache(settings.prefix_cache_sessions, settings.prefix_cache_entries)
        self._adapter_specs: list[AdapterSpec] = []  # LoRA adapters loaded through peft (services/llm/adapters.py)
        self._routing: AdapterRouting | None = None  # which adapter each row of a forward runs through
        self.model: Any = None
        self.tokenizer: Any = None
        self.processor: Any = None  # speech-in models only: renders prompts and extracts audio features
        self._prompts: PromptEncoder | None = None  # messages -> ids (+ encoder inputs), the checkpoint's way
        self.speech: SpeechInput | None = None
        self._audio_token_id: int | None = None
        self.context_len = 0
        self._eos_ids: set[int] = set()
        self._cond = threading.Condition()
        self._waiting: collections.deque[GenerationHandle] = collections.deque()
        self._prewarms: collections.deque[_PrewarmJob] = collections.deque()
        self._running: list[_Active] = []
        self._turn = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        self._thread = threading.Thread(target=self._worker, name="llm-transformers", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        s = self.settings
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
        path = resolve_model(s.model)
        dtype: Any = "auto" if s.dtype == "auto" else getattr(torch, s.dtype)
        started = time.perf_counter()
        config = AutoConfig.from_pretrained(path)
        adapters = s.served_adapters()
        language_model = None
        if getattr(config, "audio_config", None) is not None:
            self._load_speech_model(path, config, dtype)
            # Adapters of a speech-in model may adapt its language model only (the audio encoder has q_proj too).
            language_model = _module_path(self.model, self.model.get_decoder())
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(s.device).eval()
            self._prompts = PromptEncoder(None, self.tokenizer)
        if adapters:  # checked against the model before peft touches it: a mismatch names the adapter
            self._adapter_specs = check_adapters(adapters, self.model.config, s.model_name,
                                                 language_model=language_model)
            self._routing = AdapterRouting(load_peft(self.model, self._adapter_specs))
            # The LoRA layers sit inside the model itself: forwards skip peft's wrapper, the routing picks rows.
            self.model = self._routing.model.get_base_model()
        text_config = self.model.config.get_text_config()
        model_max = int(getattr(text_config, "max_position_embeddings", 0) or 32768)
        self.context_len = min(s.max_model_len, model_max) if s.max_model_len else model_max
        eos = self.model.generation_config.eos_token_id
        self._eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
        if self.tokenizer.eos_token_id is not None:
            self._eos_ids.add(self.tokenizer.eos_token_id)
        with torch.inference_mode():  # first forward pays one-off allocation costs; not a request's
            self.model(input_ids=torch.tensor([[0]], device=s.device))
        log.info("loaded %s (%s) in %.1fs, context %d%s", s.model, path, time.perf_counter() - started,
                 self.context_len, f", hears {self.speech}" if self.speech else "")

    def _load_speech_model(self, path: str, config: Any, dtype: Any) -> None:
        """A speech-in checkpoint: its processor, and the model class its config names (no per-model code)."""
        import transformers
        from transformers import AutoProcessor

        architecture = (config.architectures or [""])[0]
        model_class = getattr(transformers, architecture, None)
        if model_class is None:
            raise RuntimeError(f"{self.settings.model}: architecture {architecture!r} (model_type "
                               f"{config.model_type!r}) is not one transformers {transformers.__version__} implements; "
                               "serve it with engine=vllm or upgrade transformers")
        self.processor = AutoProcessor.from_pretrained(path)
        self.tokenizer = self.processor.tokenizer
        self.model = model_class.from_pretrained(path, dtype=dtype).to(self.settings.device).eval()
        self.speech, self._audio_token_id = speech_input_from_processor(self.processor, self.settings.max_audio_s)
        self._prompts = PromptEncoder(self.processor, self.tokenizer, self.speech.sample_rate_hz)

    async def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        for handle in list(self._waiting):
            handle.push_threadsafe(Finished(FinishReason.CANCELLED))
        self._waiting.clear()
        for job in self._prewarms:
            job.loop.call_soon_threadsafe(_fail_future, job.future, RequestError(INTERNAL, "engine stopped"))
        self._prewarms.clear()

    def describe(self) -> ModelDescription:
        return ModelDescription(
            name=self.settings.model_name,
            engine=self.kind,
            context_length=self.context_len,
            speech_input=self.speech,
            adapters=tuple(self._adapter_specs),
            properties={
                "context_length": str(self.context_len),
                "device": self.settings.device,
                "dtype": self.settings.dtype,
                "max_running": str(self.settings.max_running),
                "prefill_chunk_tokens": str(self.settings.prefill_chunk_tokens),
                "tools": "true",
            },
        )

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # -- API used by the servicer (event loop side) -----------------------------------------------------

    def submit(self, request: GenerationRequest) -> GenerationHandle:
        handle = GenerationHandle(request, self._on_cancel)
        with self._cond:
            if self._stopping:
                full = "the engine is shutting down: retry on another replica"
            elif len(self._waiting) + len(self._running) >= self.settings.max_waiting + self.settings.max_running:
                full = (f"the engine queue is full ({len(self._waiting)} waiting, {len(self._running)} running): "
                        "retry later or on another replica")
            else:
                full = ""
                self._waiting.append(handle)
                self.metrics.waiting.set(len(self._waiting))
                self._cond.notify()
        if full:
            handle.push(RequestFailed(RESOURCE_EXHAUSTED, full))
            handle.push(Finished(FinishReason.ERROR))
        return handle

    async def prewarm(
        self, session_id: str, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...] = (), adapter: str = ""
    ) -> PrewarmResult:
        loop = asyncio.get_running_loop()
        job = _PrewarmJob(session_id, messages, tools, loop.create_future(), loop, adapter)
        with self._cond:
            if self._stopping:
                raise RequestError(RESOURCE_EXHAUSTED, "the engine is shutting down")
            if len(self._prewarms) >= max(1, self.settings.max_waiting):
                raise RequestError(RESOURCE_EXHAUSTED, f"{len(self._prewarms)} prewarms are already queued: "
                                   "send one per partial transcript and wait for `prewarmed`")
            self._prewarms.append(job)
            self._cond.notify()
        return await job.future

    def end_session(self, session_id: str) -> None:
        for adapter in ("", *self.adapters()):
            self.prefix_cache.drop_session(self._cache_key(session_id, adapter))

    def adapters(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self._adapter_specs)

    @staticmethod
    def _cache_key(session_id: str, adapter: str) -> str:
        """Prefix-cache key: KV computed through an adapter is that adapter's alone."""
        return f"{session_id}\x00{adapter}" if adapter else session_id

    def _route(self, adapters: list[str]) -> None:
        """Make the next forward run row i through `adapters[i]` (nothing to do when no adapter is loaded)."""
        if self._routing is not None:
            self._routing.use(adapters)

    def _on_cancel(self, handle: GenerationHandle) -> None:
        with self._cond:
            try:
                self._waiting.remove(handle)
            except ValueError:
                self._cond.notify()  # running: the worker finishes it before its next step
                return
            self.metrics.waiting.set(len(self._waiting))
        self.metrics.cancellations.inc()
        handle.push(Finished(FinishReason.CANCELLED, total_ms=_ms_since(handle.request.arrival)))

    # -- worker thread ----------------------------------------------------------------------------------

    def _worker(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not (self._waiting or self._prewarms or self._running):
                        self._cond.wait()
                    if self._stopping:
                        break
                    self._admit()
                    job = self._prewarms[0] if self._prewarms else None
                if job is not None and self._prewarm_step(job):  # one chunk; the next job once it is done
                    with self._cond:
                        self._prewarms.remove(job)
                self._reap_cancelled()
                prefilling = [a for a in self._running if a.next_input is None]
                if prefilling:  # one prompt chunk per iteration, round-robin over new requests
                    self._turn %= len(prefilling)
                    self._guarded(self._prefill_step, prefilling[self._turn])
                    self._turn += 1
                decoding = [a for a in self._running if a.next_input is not None]
                if decoding:  # then one token for every request past its prompt, in one batch
                    self._guarded(self._decode_step, decoding)
            for active in list(self._running):
                self._finish(active, FinishReason.CANCELLED)

    def _admit(self) -> None:
        while self._waiting and len(self._running) < self.settings.max_running:
            handle = self._waiting.popleft()
            now = time.perf_counter()
            self.metrics.queue_wait.observe(now - handle.request.arrival)
            self._running.append(_Active(handle=handle, admitted=now))
        self.metrics.waiting.set(len(self._waiting))
        self.metrics.running.set(len(self._running))

    def _reap_cancelled(self) -> None:
        for active in [a for a in self._running if a.handle.cancel_requested]:
            self.metrics.cancellations.inc()
            self._finish(active, FinishReason.CANCELLED)

    def _encode(self, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...], for_generate: bool) -> torch.Tensor:
        ids, _ = self._encode_with_audio(messages, tools, for_generate, features=False)
        return ids

    def _encode_with_audio(
        self, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...], for_generate: bool, features: bool = True
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """Prompt ids, and the audio encoder's inputs when a message carries audio (``features``).

        A speech-in model's own processor builds every prompt, text-only ones too (speech_prompt.py), so a
        prewarmed text prefix and a later audio turn tokenise alike.
        """
        assert self._prompts is not None
        prompt = self._prompts.encode(messages, tools, for_generate, features=features)
        ids = torch.tensor(prompt.ids, dtype=torch.long, device=self.settings.device)
        audio = None
        if prompt.audio is not None:
            audio = {k: v.to(self.settings.device) for k, v in prompt.audio.items()}
            if "input_features" in audio and self.model.dtype.is_floating_point:
                audio["input_features"] = audio["input_features"].to(self.model.dtype)
        return ids, audio

    def _audio_start(self, ids: torch.Tensor) -> int | None:
        """Index of the first audio token in ``ids`` (None when there is none)."""
        if self._audio_token_id is None:
            return None
        found = torch.nonzero(ids == self._audio_token_id)
        return int(found[0]) if found.numel() else None

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _forward(self, ids: torch.Tensor, past: Any, adapter: str = "", **audio: torch.Tensor) -> torch.Tensor:
        """Run ``ids`` after ``past`` (extended in place) through ``adapter``; returns the last position's logits."""
        self._route([adapter])
        out = self.model(input_ids=ids[None, :], cache=past, use_cache=True, logits_to_keep=1, **audio)
        return out.logits[0, -1]

    def _chunk_end(self, prefilled: int, total: int, contended: bool) -> int:
        """Where this step's prompt chunk ends: small chunks while others wait for the worker, larger ones
        alone, where only the per-step cost counts (a chunk size of 0 = the whole rest of the prompt)."""
        s = self.settings
        chunk = s.prefill_chunk_tokens if contended else s.prefill_solo_chunk_tokens
        return total if chunk == 0 else min(prefilled + chunk, total)

    def _prewarm_step(self, job: _PrewarmJob) -> bool:
        """One prompt chunk of a prewarm; True when the job is over (its future is then settled)."""
        if job.future.cancelled():  # its caller went away (stream closed): stop spending steps on it
            job.past = None
            return True
        try:
            if job.ids is None:
                job.ids = self._encode(job.messages, job.tools, for_generate=False)
                if job.ids.numel() >= self.context_len:
                    raise RequestError(INVALID_ARGUMENT, prompt_too_long(job.ids.numel(), self.context_len,
                                                                         self.settings.model_name))
                audio_at = self._audio_start(job.ids)
                if audio_at is not None:  # audio is heard at generate time; warm the text before it
                    job.ids = job.ids[:audio_at]
                job.prefilled, job.past = self.prefix_cache.take(self._cache_key(job.session_id, job.adapter), job.ids)
                if job.past is None:
                    job.past = self._new_cache()
            total = int(job.ids.numel())
            if job.prefilled < total:
                end = self._chunk_end(job.prefilled, total, contended=bool(self._running) or len(self._prewarms) > 1)
                self._forward(job.ids[job.prefilled : end], job.past, job.adapter)
                job.prefilled = end
            if job.prefilled < total:
                return False
            self.prefix_cache.store(self._cache_key(job.session_id, job.adapter), job.ids, job.past)
            self.metrics.prewarms.inc()
            result: PrewarmResult | BaseException = PrewarmResult(total, _ms_since(job.arrival))
        except RequestError as exc:
            result = exc
        except Exception as exc:
            log.exception("prewarm failed")
            result = RequestError(INTERNAL, f"prewarm failed: {exc}")
        job.past = None
        if isinstance(result, BaseException):
            job.loop.call_soon_threadsafe(_fail_future, job.future, result)
        else:
            job.loop.call_soon_threadsafe(_resolve_future, job.future, result)
        return True

    def _start_request(self, active: _Active) -> bool:
        """Tokenise and look up the prefix cache; False when the request failed."""
        request = active.handle.request
        ids, active.audio_inputs = self._encode_with_audio(request.messages, request.tools, for_generate=True)
        audio_seconds = sum(m.audio_seconds for m in request.messages)
        if audio_seconds:
            self.metrics.audio_seconds.inc(audio_seconds)
        if ids.numel() >= self.context_len:
            active.prompt_ids = ids
            active.handle.push_threadsafe(RequestFailed(
                INVALID_ARGUMENT, prompt_too_long(ids.numel(), self.context_len, self.settings.model_name)))
            self._finish(active, FinishReason.ERROR)
            return False
        active.prompt_ids = ids
        active.audio_at = self._audio_start(ids) if active.audio_inputs is not None else None
        # Placeholder ids stand for whatever audio a request brought: only the text before them is reusable.
        lookup = ids if active.audio_at is None else ids[: active.audio_at + 1]
        key = self._cache_key(request.session_id, request.adapter)
        active.cached, active.past = self.prefix_cache.take(key, lookup)
        if active.past is None:
            active.past = self._new_cache()
        active.prefilled = active.cached
        self.metrics.record_prefix_lookup(int(ids.numel()), active.cached)
        active.max_new = min(request.sampling.max_tokens, self.context_len - int(ids.numel()))
        active.detokenizer = IncrementalDetokenizer(self.tokenizer)
        active.stopper = StopStringMatcher(request.stop)
        active.parser = ToolCallParser(request.tools)
        if request.sampling.seed is not None:
            active.generator = torch.Generator(device=self.settings.device).manual_seed(request.sampling.seed)
        return True

    def _guarded(self, step: Any, target: Any) -> None:
        """Run a step; a failure fails the requests involved, never the engine."""
        try:
            step(target)
        except RequestError as exc:  # the request's own problem, found while encoding it (mistral-common's checks)
            for active in target if isinstance(target, list) else [target]:
                active.handle.push_threadsafe(RequestFailed(exc.code, exc.message))
                self._finish(active, FinishReason.ERROR)
        except Exception as exc:
            affected = target if isinstance(target, list) else [target]
            log.exception("generation step failed for %s", [a.handle.request_id for a in affected])
            for active in affected:
                active.handle.push_threadsafe(RequestFailed(INTERNAL, f"the engine failed: {exc}"))
                self._finish(active, FinishReason.ERROR)

    def _prefill_step(self, active: _Active) -> None:
        """One prompt chunk of a new request; the last chunk also yields its first token."""
        if active.prompt_ids is None and not self._start_request(active):
            return
        assert active.prompt_ids is not None
        total = int(active.prompt_ids.numel())
        end = self._chunk_end(active.prefilled, total, contended=len(self._running) > 1 or bool(self._prewarms))
        audio: dict[str, torch.Tensor] = {}
        if active.audio_inputs is not None and active.audio_at is not None and end > active.audio_at:
            # The chunk reaching the audio takes the whole rest of the prompt and the encoder inputs at once.
            end, audio, active.audio_inputs = total, active.audio_inputs, None
        logits = self._forward(active.prompt_ids[active.prefilled : end], active.past, active.handle.request.adapter,
                               **audio)
        active.prefilled = end
        if end == total:
            self._on_token(active, self._choose(active, logits))

    def _decode_step(self, batch: list[_Active]) -> None:
        """One new token for each request in ``batch`` (a single forward when there are several)."""
        device = self.settings.device
        tokens = [a.next_input for a in batch]
        if len(batch) == 1 or not self.settings.batch_decode:
            for active, token in zip(batch, tokens, strict=True):
                logits = self._forward(torch.tensor([token], device=device), active.past, active.handle.request.adapter)
                self._on_token(active, self._choose(active, logits))
            return
        self._route([a.handle.request.adapter for a in batch])
        rows = batched_decode_step(self.model, [a.past for a in batch], tokens, self._new_cache())
        for active, logits in zip(batch, rows, strict=True):
            self._on_token(active, self._choose(active, logits))

    def _choose(self, active: _Active, logits: torch.Tensor) -> int:
        assert active.prompt_ids is not None
        seen = torch.cat([active.prompt_ids, torch.tensor(active.generated, dtype=torch.long,
                                                          device=active.prompt_ids.device)])
        return choose_next_token(logits, active.handle.request.sampling, seen, active.generator)

    def _on_token(self, active: _Active, token: int) -> None:
        now = time.perf_counter()
        if active.first_token_at is None:
            active.first_token_at = now
            self.metrics.time_to_first_token.observe(now - active.handle.request.arrival)
        else:
            self.metrics.inter_token_latency.observe(now - active.last_token_at)
        active.last_token_at = now
        active.generated.append(token)
        active.next_input = token
        if token in self._eos_ids:
            self._finish(active, FinishReason.STOP)
            return
        assert active.detokenizer and active.stopper
        text = active.stopper.feed(active.detokenizer.push(token))
        self._emit_text(active, text)
        if active.stopper.stopped:
            self._finish(active, FinishReason.STOP)
        elif len(active.generated) >= active.max_new:
            self._finish(active, FinishReason.LENGTH)

    def _emit_text(self, active: _Active, text: str, final: bool = False) -> None:
        assert active.parser is not None
        chunk = active.parser.feed(text) if text else None
        pieces = [chunk] if chunk else []
        if final:
            pieces.append(active.parser.finish())
        for piece in pieces:
            if piece.text:
                active.handle.push_threadsafe(TextDelta(piece.text))
            for call in piece.tool_calls:
                active.handle.push_threadsafe(ToolCallEvent(call))

    def _finish(self, active: _Active, reason: FinishReason) -> None:
        if active.finished:
            return
        active.finished = True
        if active in self._running:
            self._running.remove(active)
            self.metrics.running.set(len(self._running))
        request = active.handle.request
        if reason in (FinishReason.STOP, FinishReason.LENGTH) and active.parser is not None:
            assert active.stopper is not None
            self._emit_text(active, active.stopper.flush(), final=True)
            if active.parser.calls:
                reason = FinishReason.TOOL_CALLS
            if active.past is not None and active.prompt_ids is not None:
                # Keep this turn's cache: the next turn of the conversation starts with it.
                full = torch.cat([active.prompt_ids, torch.tensor(active.generated, dtype=torch.long,
                                                                  device=active.prompt_ids.device)])
                keep = active.past.get_seq_length()
                if active.audio_at is not None:  # the text before the audio only (see _start_request)
                    if keep > active.audio_at:
                        active.past.crop(active.audio_at - keep)  # transformers 5: negative = drop that many
                    keep = active.audio_at
                self.prefix_cache.store(self._cache_key(request.session_id, request.adapter), full[:keep], active.past)
        active.past = None  # frees a cancelled/failed request's KV cache now
        prompt_tokens = 0 if active.prompt_ids is None else int(active.prompt_ids.numel())
        self.metrics.tokens.labels("prompt").inc(prompt_tokens)
        self.metrics.tokens.labels("cached_prompt").inc(active.cached)
        self.metrics.tokens.labels("completion").inc(len(active.generated))
        total_s = time.perf_counter() - request.arrival
        self.metrics.request_duration.labels(reason.value).observe(total_s)
        active.handle.push_threadsafe(Finished(
            reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(active.generated),
            cached_prompt_tokens=active.cached,
            time_to_first_token_ms=0.0 if active.first_token_at is None
            else (active.first_token_at - request.arrival) * 1000.0,
            queue_ms=(active.admitted - request.arrival) * 1000.0,
            total_ms=total_s * 1000.0,
        ))


def _module_path(model: Any, module: Any) -> str:
    """The dotted path of `module` inside `model` (the language model of a multimodal checkpoint)."""
    return next(name for name, candidate in model.named_modules() if candidate is module)


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _resolve_future(future: asyncio.Future[PrewarmResult], result: PrewarmResult) -> None:
    if not future.done():
        future.set_result(result)


def _fail_future(future: asyncio.Future[PrewarmResult], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
