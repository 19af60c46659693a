"""Routing a session's stages to backend replicas, and the open streams that result.

Each new stream goes to the least-loaded replica (this orchestrator's own count of streams it holds there)
that is not cooling down and was SERVING at the last health check; a replica that answers
RESOURCE_EXHAUSTED or UNAVAILABLE, or cannot be reached, cools down for a while and the next candidate is
tried. A stream counts as open only once the replica has admitted it (the chassis sends initial metadata
on admission), so failing over costs no work on the refusing replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from voxgrid.orchestrator.discovery import Discovery

from voxgrid.client import channel, health_status
from voxgrid.errors import details_of
from voxgrid.server.interceptors import ADMITTED_HEADER

log = logging.getLogger("voxgrid.orchestrator.routing")
RETRIABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_END = object()


class BackendError(Exception):
    """A stage could not be served; `code` is the gRPC status to report, `stage` which one."""

    def __init__(self, stage: str, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.code = code
        self.message = message


class StageStream:
    """An admitted bidi stream to one replica: send requests, iterate responses, close."""

    def __init__(self, stage: str, target: str, call: grpc.aio.StreamStreamCall, queue: asyncio.Queue[Any],
                 on_close: Callable[[], None]) -> None:
        self.stage = stage
        self.target = target
        self.call = call
        self._queue = queue
        self._on_close = on_close
        self.closed = False

    def send(self, request: Any) -> None:
        if not self.closed:
            self._queue.put_nowait(request)

    async def responses(self) -> AsyncIterator[Any]:
        async for response in self.call:
            yield response

    def half_close(self) -> None:
        self._queue.put_nowait(_END)

    def close(self) -> None:
        """Cancel the stream now (the replica frees the session's resources at once)."""
        if not self.closed:
            self.closed = True
            self.call.cancel()
            self._on_close()


class BackendPool:
    """The replicas of one stage (stt, llm, tts, duplex) as this orchestrator sees them."""

    def __init__(self, stage: str, discovery: Discovery, stub_factory: Callable[[grpc.aio.Channel], Any],
                 token: str = "", connect_timeout_s: float = 5.0, cooldown_s: float = 2.0) -> None:
        self.stage = stage
        self.discovery = discovery
        self._stub_factory = stub_factory
        self._token = token or None
        self.connect_timeout_s = connect_timeout_s
        self.cooldown_s = cooldown_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.open_streams: dict[str, int] = {}
        self._cooling_until: dict[str, float] = {}
        # Each replica's gRPC health at the last `probe` (SERVING, NOT_SERVING, UNAVAILABLE, ...).
        self.health: dict[str, str] = {}

    def _channel(self, target: str) -> grpc.aio.Channel:
        ch = self._channels.get(target)
        if ch is None:
            ch = self._channels[target] = channel(target, token=self._token)
        return ch

    def stub(self, target: str) -> Any:
        return self._stub_factory(self._channel(target))

    def candidates(self) -> list[str]:
        now = time.monotonic()
        targets = list(self.discovery.targets)
        random.shuffle(targets)  # ties go to a random replica, not always the first one
        # A replica last seen loading or unreachable is still tried, after the others: the check may be stale.
        return sorted(targets, key=lambda t: (self._cooling_until.get(t, 0) > now,
                                              self.health.get(t, "SERVING") != "SERVING",
                                              self.open_streams.get(t, 0)))

    async def probe(self, timeout_s: float) -> dict[str, str]:
        """Check the gRPC health of every known replica at once; remembered for routing."""
        targets = list(self.discovery.targets)
        statuses = await asyncio.gather(*(health_status(self._channel(t), timeout_s=timeout_s) for t in targets))
        self.health = dict(zip(targets, statuses, strict=True))
        return self.health

    def cool_down(self, target: str, seconds: float | None = None) -> None:
        self._cooling_until[target] = time.monotonic() + (self.cooldown_s if seconds is None else seconds)

    async def open(self, method: str, config_request: Any, exclude: set[str] | None = None) -> StageStream:
        """Open `method` (a bidi RPC name on the stub) with its config on the best replica that admits it."""
        tried: list[str] = []
        last_error = "no replica is known (check the backend setting / discovery)"
        for target in self.candidates():
            if exclude and target in exclude and len(self.discovery.targets) > 1:
                continue
            tried.append(target)
            queue: asyncio.Queue[Any] = asyncio.Queue()
            queue.put_nowait(config_request)

            async def requests(q: asyncio.Queue[Any] = queue) -> AsyncIterator[Any]:
                while (item := await q.get()) is not _END:
                    yield item

            call = getattr(self.stub(target), method)(requests())
            try:
                metadata = await asyncio.wait_for(call.initial_metadata(), self.connect_timeout_s)
            except TimeoutError:
                call.cancel()
                self.cool_down(target)
                last_error = f"{target} did not answer within {self.connect_timeout_s:.1f}s"
                continue
            except BaseException:  # the caller gave up while the replica was admitting: free it there too
                call.cancel()
                raise
            if metadata is not None and any(k == ADMITTED_HEADER for k, _ in metadata):
                self.open_streams[target] = self.open_streams.get(target, 0) + 1
                return StageStream(self.stage, target, call, queue, lambda t=target: self._closed(t))
            code = await call.code()
            details = await call.details()
            if code in RETRIABLE:
                # RetryInfo of a full replica (or the deprecated `retry-after-ms` trailer of an older one).
                refusal = details_of(code, details or "", await call.trailing_metadata())
                self.cool_down(target, refusal.retry_after_s)
                last_error = f"{target}: {code.name} {details}"
                log.info("%s replica %s refused (%s), trying another", self.stage, target, code.name)
                continue
            raise BackendError(self.stage, code, details or code.name)
        raise BackendError(self.stage, grpc.StatusCode.UNAVAILABLE,
                           f"no {self.stage} replica accepted the session (tried {len(tried)}: {last_error})")

    def _closed(self, target: str) -> None:
        self.open_streams[target] = max(0, self.open_streams.get(target, 1) - 1)

    async def unary(self, method: str, request: Any, timeout_s: float = 5.0) -> Any:
        """A unary call (discovery RPCs) on any healthy replica."""
        last: Exception | None = None
        for target in self.candidates():
            try:
                return await getattr(self.stub(target), method)(request, timeout=timeout_s)
            except grpc.aio.AioRpcError as err:
                last = err
                if err.code() not in RETRIABLE:
                    raise BackendError(self.stage, err.code(), err.details() or "") from err
                self.cool_down(target)
        raise BackendError(self.stage, grpc.StatusCode.UNAVAILABLE, f"no {self.stage} replica answered ({last})")

    async def start(self) -> None:
        await self.discovery.start()

    async def close(self) -> None:
        await self.discovery.stop()
        for ch in self._channels.values():
            with contextlib.suppress(Exception):
                await ch.close()
