"""A small asyncio client for the LLM Chat stream: many requests on one stream, responses by request id.

Used by `voxgrid generate`, the tests and the benchmark. It imports no model code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import grpc
import numpy as np

from voxgrid.audio import encode, pcm16_spec
from voxgrid.v1 import audio_pb2, llm_pb2, llm_pb2_grpc

_END = object()


def user(text: str) -> llm_pb2.ChatMessage:
    return llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=text)


def user_audio(samples: np.ndarray, rate: int, text: str = "") -> llm_pb2.ChatMessage:
    """A user turn as speech (hybrid mode): float32 mono samples sent as PCM16 at ``rate``."""
    clip = llm_pb2.AudioClip(format=pcm16_spec(rate).to_proto(), data=encode(samples, pcm16_spec(rate)))
    return llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=text, audio=clip)


def system(text: str) -> llm_pb2.ChatMessage:
    return llm_pb2.ChatMessage(role=llm_pb2.ROLE_SYSTEM, content=text)


def assistant(text: str) -> llm_pb2.ChatMessage:
    return llm_pb2.ChatMessage(role=llm_pb2.ROLE_ASSISTANT, content=text)


@dataclass
class Result:
    """Everything one generate returned, with client-side timing."""

    text: str = ""
    tool_calls: list[audio_pb2.ToolCall] = field(default_factory=list)
    errors: list[llm_pb2.RequestError] = field(default_factory=list)
    done: llm_pb2.GenerationDone | None = None
    deltas: int = 0
    sent_at: float = 0.0
    first_delta_at: float | None = None
    done_at: float = 0.0

    @property
    def client_ttft_ms(self) -> float | None:
        return None if self.first_delta_at is None else (self.first_delta_at - self.sent_at) * 1e3


class ChatStream:
    """One `Chat` stream. Use as ``async with ChatStream(channel) as chat:``."""

    def __init__(self, channel: grpc.aio.Channel, session_id: str = "", model: str = "", adapter: str = "") -> None:
        self._stub = llm_pb2_grpc.LanguageModelStub(channel)
        self._config = llm_pb2.ChatConfig(session_id=session_id, model=model, adapter=adapter)
        self._outgoing: asyncio.Queue[object] = asyncio.Queue()
        self._by_request: dict[str, asyncio.Queue[object]] = {}
        self.untagged: asyncio.Queue[object] = asyncio.Queue()
        self.call: grpc.aio.StreamStreamCall | None = None
        self._reader: asyncio.Task[None] | None = None
        self.stream_error: grpc.aio.AioRpcError | None = None

    async def __aenter__(self) -> ChatStream:
        self._outgoing.put_nowait(llm_pb2.ChatRequest(config=self._config))
        self.call = self._stub.Chat(self._requests())
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _requests(self) -> AsyncIterator[llm_pb2.ChatRequest]:
        while True:
            item = await self._outgoing.get()
            if item is _END:
                return
            assert isinstance(item, llm_pb2.ChatRequest)
            yield item

    async def _read(self) -> None:
        assert self.call is not None
        try:
            async for response in self.call:
                queue = self._by_request.get(response.request_id) if response.request_id else None
                (queue or self.untagged).put_nowait(response)
        except grpc.aio.AioRpcError as err:
            self.stream_error = err
        finally:
            for queue in [*self._by_request.values(), self.untagged]:
                queue.put_nowait(_END)

    def send(self, request: llm_pb2.ChatRequest) -> None:
        """Send any request as is (tests use it for malformed input)."""
        self._outgoing.put_nowait(request)

    def start(
        self, request_id: str, messages: Sequence[llm_pb2.ChatMessage],
        sampling: audio_pb2.SamplingParams | None = None, tools: Sequence[audio_pb2.ToolSchema] = (),
        stop: Sequence[str] = (),
    ) -> asyncio.Queue[object]:
        """Send a generate; returns the queue its responses arrive in (see `collect`)."""
        queue: asyncio.Queue[object] = asyncio.Queue()
        self._by_request[request_id] = queue
        self.send(llm_pb2.ChatRequest(generate=llm_pb2.GenerateRequest(
            request_id=request_id, messages=messages, sampling=sampling, tools=tools, stop=stop)))
        return queue

    async def collect(
        self, queue: asyncio.Queue[object], sent_at: float | None = None,
        on_response: Callable[[llm_pb2.ChatResponse], None] | None = None,
    ) -> Result:
        """Read one request's responses until its `done` (or the stream's end); `on_response` sees each."""
        result = Result(sent_at=time.perf_counter() if sent_at is None else sent_at)
        while True:
            item = await queue.get()
            if item is _END:
                return result
            assert isinstance(item, llm_pb2.ChatResponse)
            if on_response is not None:
                on_response(item)
            kind = item.WhichOneof("event")
            if kind == "delta":
                if result.first_delta_at is None:
                    result.first_delta_at = time.perf_counter()
                result.text += item.delta.text
                result.deltas += 1
            elif kind == "tool_call":
                result.tool_calls.append(item.tool_call)
            elif kind == "error":
                result.errors.append(item.error)
            elif kind == "done":
                result.done = item.done
                result.done_at = time.perf_counter()
                return result

    async def generate(
        self, request_id: str, messages: Sequence[llm_pb2.ChatMessage],
        sampling: audio_pb2.SamplingParams | None = None, tools: Sequence[audio_pb2.ToolSchema] = (),
        stop: Sequence[str] = (),
    ) -> Result:
        sent_at = time.perf_counter()
        return await self.collect(self.start(request_id, messages, sampling, tools, stop), sent_at)

    def cancel(self, request_id: str) -> None:
        self.send(llm_pb2.ChatRequest(cancel=llm_pb2.CancelRequest(request_id=request_id)))

    async def prewarm(
        self, messages: Sequence[llm_pb2.ChatMessage], tools: Sequence[audio_pb2.ToolSchema] = ()
    ) -> llm_pb2.ChatResponse | None:
        """Send a prewarm and wait for its `prewarmed` (or `error`) answer; None if the stream ended."""
        self.send(llm_pb2.ChatRequest(prewarm=llm_pb2.PrewarmRequest(messages=messages, tools=tools)))
        item = await self.untagged.get()
        return item if isinstance(item, llm_pb2.ChatResponse) else None

    async def close(self) -> None:
        """Half-close (the server finishes running requests), then wait for the stream's end."""
        self._outgoing.put_nowait(_END)
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    def abandon(self) -> None:
        """Vanish like a crashed client: cancel the RPC without closing the stream politely."""
        if self.call is not None:
            self.call.cancel()
