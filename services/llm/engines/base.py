"""The engine interface every LLM engine implements, and the engine-neutral types it speaks.

The servicer (gRPC edge) converts protos into these types, submits requests and relays the events;
engines never see protos and the servicer never touches a model. A request's events always end with
exactly one `Finished`, whatever happened (done, cancelled, failed), so the edge needs no special cases.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from voxgrid.services.llm.adapters import AdapterSpec

ROLES = ("system", "user", "assistant", "tool")

# gRPC status code numbers used in RequestFailed (kept numeric so engines do not import grpc).
INVALID_ARGUMENT = 3
NOT_FOUND = 5
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
INTERNAL = 13


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments_json: str


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call; `parameters` is its JSON Schema (an object), {} = no arguments."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    role: str
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    # Speech heard by a speech-in model: float32 mono windows at the model's rate, each at most one
    # window of its audio encoder long (`SpeechInput.max_clip_ms`); one audio placeholder per window.
    audio: tuple[np.ndarray, ...] = field(default=(), compare=False, repr=False)
    audio_rate_hz: int = 0

    @property
    def audio_seconds(self) -> float:
        return sum(len(w) for w in self.audio) / self.audio_rate_hz if self.audio else 0.0


@dataclass(frozen=True)
class SpeechInput:
    """How a speech-in model hears: what ListModels reports and what requests are checked against."""

    sample_rate_hz: int
    max_clip_ms: int  # one window of the audio encoder = one audio placeholder in the prompt
    max_audio_ms: int  # longest audio one message may carry (split into windows); more is INVALID_ARGUMENT
    tokens_per_second: int = 0  # prompt tokens per second of audio, roughly (context budgeting)


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters with the defaults documented in llm.proto."""

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 256
    seed: int | None = None
    repetition_penalty: float = 1.0

    def problems(self) -> list[str]:
        """Human-readable reasons these values are invalid (empty when valid)."""
        found = []
        if not 0.0 <= self.temperature <= 2.0:
            found.append(f"temperature must be in [0, 2] (0 = greedy), got {self.temperature:g}")
        if not 0.0 < self.top_p <= 1.0:
            found.append(f"top_p must be in (0, 1], got {self.top_p:g}")
        if self.top_k < 0:
            found.append(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 1 <= self.max_tokens <= 8192:
            found.append(f"max_tokens must be in [1, 8192], got {self.max_tokens}")
        if not 0.0 < self.repetition_penalty <= 2.0:
            found.append(f"repetition_penalty must be in (0, 2], got {self.repetition_penalty:g}")
        return found


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    session_id: str
    messages: tuple[Message, ...]
    sampling: Sampling = Sampling()
    tools: tuple[ToolSpec, ...] = ()
    stop: tuple[str, ...] = ()
    adapter: str = ""
    # time.perf_counter() when the request reached the server; latencies are measured from here.
    arrival: float = field(default_factory=time.perf_counter)


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    TOOL_CALLS = "tool_calls"
    ERROR = "error"


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCallEvent:
    call: ToolCall


@dataclass(frozen=True)
class RequestFailed:
    """A request-level problem; `code` is a gRPC status number, `message` says what to change."""

    code: int
    message: str


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    time_to_first_token_ms: float = 0.0
    queue_ms: float = 0.0
    total_ms: float = 0.0


Event = TextDelta | ToolCallEvent | RequestFailed | Finished


@dataclass(frozen=True)
class PrewarmResult:
    prompt_tokens: int
    latency_ms: float


@dataclass(frozen=True)
class ModelDescription:
    name: str
    engine: str
    properties: dict[str, str] = field(default_factory=dict)
    context_length: int = 0
    # None = the model cannot hear; requests with audio are then FAILED_PRECONDITION.
    speech_input: SpeechInput | None = None
    # LoRA adapters served on the model (services/llm/adapters.py), each checked against it at start.
    adapters: tuple[AdapterSpec, ...] = ()


class RequestError(Exception):
    """Raised by engine calls that answer synchronously (prewarm): a request-level problem."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class GenerationHandle:
    """One submitted generation: iterate it for events (ending with `Finished`), `cancel()` to abort.

    Engines push events from any thread with `push_threadsafe`; the queue lives on the event loop that
    created the handle, so consumers never block and a worker thread never touches asyncio state directly.
    """

    def __init__(self, request: GenerationRequest, on_cancel: Callable[[GenerationHandle], None]) -> None:
        self.request = request
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._on_cancel = on_cancel
        self.cancel_requested = False
        self.finished = False

    @property
    def request_id(self) -> str:
        return self.request.request_id

    def push(self, event: Event) -> None:
        """Deliver an event; call on the handle's event loop."""
        self._events.put_nowait(event)

    def push_threadsafe(self, event: Event) -> None:
        """Deliver an event from a worker thread."""
        self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    def cancel(self) -> None:
        """Ask the engine to abort; a `Finished(CANCELLED)` follows (at most one decode step later)."""
        if not self.cancel_requested and not self.finished:
            self.cancel_requested = True
            self._on_cancel(self)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = await self._events.get()
            if isinstance(event, Finished):
                self.finished = True
            yield event
            if self.finished:
                return


class LlmEngine(abc.ABC):
    """What the servicer needs from an engine. Implementations keep model work off the event loop."""

    kind: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model; the replica reports NOT_SERVING until this returns."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Abort everything in flight and release the model."""

    @abc.abstractmethod
    def submit(self, request: GenerationRequest) -> GenerationHandle:
        """Queue a generation; never blocks. Problems arrive as `RequestFailed` + `Finished(ERROR)`."""

    @abc.abstractmethod
    async def prewarm(
        self, session_id: str, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...] = (), adapter: str = ""
    ) -> PrewarmResult:
        """Fill the prefix cache with these messages' prompt (computed with `adapter`, as the session's
        generations will be); raises `RequestError` on bad input."""

    def end_session(self, session_id: str) -> None:  # noqa: B027 - optional hook, default no-op
        """The session's stream closed: drop what the engine keeps for it (prewarmed prefixes)."""

    @abc.abstractmethod
    def describe(self) -> ModelDescription:
        """Name, engine and facts (context length, dtype, device) for ListModels."""

    def adapters(self) -> tuple[str, ...]:
        """LoRA adapter names this engine serves."""
        return ()

    def check_adapter(self, name: str) -> None:
        """Raise `RequestError` when a stream may not use adapter `name` (empty = the base model).

        Checked at the stream's config, before any work, so a bad adapter never reaches the model.
        """
        if name and name not in self.adapters():
            offered = ", ".join(self.adapters()) or "none"
            raise RequestError(INVALID_ARGUMENT, f"adapter {name!r} is not served here (adapters: {offered}); "
                               "leave `adapter` empty for the base model")

    @property
    def running(self) -> int:
        return 0

    @property
    def waiting(self) -> int:
        return 0
