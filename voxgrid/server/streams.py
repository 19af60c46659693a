"""Helpers every bidi servicer uses: config-first reading, status errors, and a reader/outbox pump.

A voxgrid stream reads requests and writes responses at the same time (audio keeps arriving while
results go out), so each servicer runs its request loop in a task and yields from an outbox. Errors
found in that task travel to the handler task as `StreamError`, which turns them into a gRPC status.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, NoReturn, TypeVar

import grpc

from voxgrid import errors
from voxgrid.errors import Reason
from voxgrid.logs import bind_session

T = TypeVar("T")
_CLOSED = object()

__all__ = ["Outbox", "StreamError", "abort", "bind_session", "invalid", "pump", "read_config"]


class StreamError(Exception):
    """Ends the stream with this status; the message must tell the client what to change.

    `reason`, `field` and `retry_after_s` become the status's google.rpc details (voxgrid.errors).
    """

    def __init__(self, code: grpc.StatusCode, message: str, *, reason: Reason | str | None = None,
                 field: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.field = field
        self.retry_after_s = retry_after_s

    async def abort(self, context: grpc.aio.ServicerContext) -> NoReturn:
        await abort(context, self.code, self.message, reason=self.reason, field=self.field,
                    retry_after_s=self.retry_after_s)


def invalid(message: str, field: str | None = None, reason: Reason | str | None = None) -> StreamError:
    return StreamError(grpc.StatusCode.INVALID_ARGUMENT, message, reason=reason, field=field)


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, **details: Any) -> NoReturn:
    """End the RPC with a status and its google.rpc details (`reason`, `field`, `retry_after_s`: voxgrid.errors)."""
    await errors.abort(context, code, message, **details)


async def read_config(
    request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext, field: str = "config"
) -> Any:
    """First message must carry `field` of the request oneof; anything else is INVALID_ARGUMENT."""
    try:
        first = await anext(aiter(request_iterator))
    except StopAsyncIteration:
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                    f"stream closed before its first message: send a `{field}` message first", field=field)
    oneof = first.DESCRIPTOR.oneofs[0].name
    which = first.WhichOneof(oneof)
    if which != field:
        await abort(
            context, grpc.StatusCode.INVALID_ARGUMENT,
            f"the first message must carry `{field}`, got `{which or 'an empty message'}`: "
            f"send the {field} first, then the stream's data", field=field,
        )
    return getattr(first, field)


class Outbox(Generic[T]):
    """Responses waiting to be yielded; closing it (optionally with an error) ends the stream."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = False

    def put(self, item: T) -> None:
        if not self.closed:
            self._queue.put_nowait(item)

    def close(self, error: BaseException | None = None) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(error if error is not None else _CLOSED)

    async def __aiter__(self) -> AsyncIterator[T]:
        while True:
            item = await self._queue.get()
            if item is _CLOSED:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


async def pump(
    request_iterator: AsyncIterator[Any],
    on_request: Callable[[Any], Awaitable[None]],
    outbox: Outbox[T],
    context: grpc.aio.ServicerContext,
    on_requests_end: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[T]:
    """Feed requests to `on_request` in a task while yielding the outbox; end on outbox close.

    When the client half-closes, `on_requests_end` runs (flush what is pending) and is responsible for
    closing the outbox once everything is sent. When the client goes away, the generator is closed and
    the reader task is cancelled, so nothing of the session keeps running.
    """

    async def reader() -> None:
        try:
            async for request in request_iterator:
                await on_request(request)
            if on_requests_end is not None:
                await on_requests_end()
            else:
                outbox.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a StreamError or a bug: both end this stream only
            outbox.close(exc)

    task = asyncio.create_task(reader())
    try:
        async for item in outbox:
            yield item
    except StreamError as err:
        await err.abort(context)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
