"""Prometheus metrics of the LLM service (voxgrid_llm_*), shared by every engine."""

from __future__ import annotations

from voxgrid import metrics

SERVICE = "llm"


class LlmMetrics:
    """Created once per process through voxgrid.metrics; engines record, the chassis exposes."""

    def __init__(self) -> None:
        self.time_to_first_token = metrics.histogram(
            SERVICE, "time_to_first_token_seconds", "Request arrival to first generated token."
        )
        self.inter_token_latency = metrics.histogram(
            SERVICE, "inter_token_latency_seconds", "Time between consecutive tokens of one request."
        )
        self.queue_wait = metrics.histogram(
            SERVICE, "queue_wait_seconds", "Request arrival to a free engine slot."
        )
        self.request_duration = metrics.histogram(
            SERVICE, "request_duration_seconds", "Request arrival to done.", labels=("finish_reason",)
        )
        self.tokens = metrics.counter(
            SERVICE, "tokens", "Tokens processed; kind = prompt, cached_prompt or completion.", labels=("kind",)
        )
        self.running = metrics.gauge(SERVICE, "running_requests", "Generations being decoded now.")
        self.waiting = metrics.gauge(SERVICE, "waiting_requests", "Generations queued for a slot.")
        self.prefix_cache_queries = metrics.counter(
            SERVICE, "prefix_cache_queried_tokens", "Prompt tokens looked up in the prefix cache."
        )
        self.prefix_cache_hits = metrics.counter(
            SERVICE, "prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache."
        )
        self.prefix_cache_hit_rate = metrics.gauge(
            SERVICE, "prefix_cache_hit_rate", "Cached / queried prompt tokens since start (0..1)."
        )
        self.cancellations = metrics.counter(SERVICE, "cancellations", "Generations cancelled or aborted.")
        self.prewarms = metrics.counter(SERVICE, "prewarms", "Prewarm requests served.")
        self.audio_seconds = metrics.counter(
            SERVICE, "audio_input_seconds", "Seconds of speech in requests a speech-in model heard (hybrid mode)."
        )
        self._queried = 0
        self._hits = 0

    def record_prefix_lookup(self, prompt_tokens: int, cached_tokens: int) -> None:
        self.prefix_cache_queries.inc(prompt_tokens)
        self.prefix_cache_hits.inc(cached_tokens)
        self._queried += prompt_tokens
        self._hits += cached_tokens
        if self._queried:
            self.prefix_cache_hit_rate.set(self._hits / self._queried)
