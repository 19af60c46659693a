"""Cross-cutting policy applied to every RPC of every service: bearer-token auth and session admission.

Both are interceptors so that a servicer never has to remember them. Admission counts every
stream-stream RPC of the service's own gRPC services as one session (health and reflection are not
sessions), refuses new ones while draining or full, and records how each one ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, NoReturn

import grpc

from voxgrid import errors
from voxgrid.errors import Reason
from voxgrid.metrics import ServiceMetrics
from voxgrid.server.admission import Admission

log = logging.getLogger("voxgrid.server")

HEALTH_PREFIX = "/grpc.health.v1.Health/"
# Initial metadata sent when a stream is admitted; its value is the replica's live stream count.
ADMITTED_HEADER = "voxgrid-admitted"
# How long a client should wait before retrying a full replica (RetryInfo, and the deprecated trailer).
FULL_RETRY_AFTER_S = 1.0


class Refusal(NamedTuple):
    """A status an interceptor answers instead of the handler, with its google.rpc details."""

    code: grpc.StatusCode
    message: str
    reason: Reason
    retry_after_s: float | None = None

    async def abort(self, context: grpc.aio.ServicerContext) -> NoReturn:
        # RetryInfo says when to retry; the `retry-after-ms` trailer beside it is deprecated (one release).
        await errors.abort(context, self.code, self.message, reason=self.reason, retry_after_s=self.retry_after_s)


def _aborting_handler(handler: grpc.RpcMethodHandler, refusal: Refusal) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only fails with the refusal's status."""

    async def fail(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if handler.request_streaming:
            # Take the client's first message before refusing: a client still sending when the status
            # arrives sees its own write fail (INTERNAL) instead of the refusal.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(anext(aiter(request)), 1.0)
        await refusal.abort(context)

    kind = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return kind(fail, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """`authorization: Bearer <token>` on every call except health checks (probes carry no token)."""

    def __init__(self, tokens: Callable[[], set[str]]) -> None:
        self._tokens = tokens

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        tokens = self._tokens()
        if not tokens:
            return handler
        header = dict(details.invocation_metadata or ()).get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            return _aborting_handler(handler, Refusal(
                grpc.StatusCode.UNAUTHENTICATED, "missing credentials: send metadata `authorization: Bearer <token>`",
                Reason.MISSING_CREDENTIALS))
        if scheme.lower() != "bearer" or token.strip() not in tokens:
            return _aborting_handler(handler, Refusal(
                grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token: check the token this deployment issued you",
                Reason.INVALID_CREDENTIALS))
        return handler


class SessionGate(Admission, grpc.aio.ServerInterceptor):
    """Admission control and accounting for the service's bidi streams."""

    def __init__(self, service: str, service_names: list[str], max_sessions: int, metrics: ServiceMetrics) -> None:
        super().__init__(max_sessions)
        self.service = service
        self._prefixes = tuple(f"/{name}/" for name in service_names)
        self.max_sessions = max_sessions
        self._metrics = metrics
        metrics.session_capacity.set(max_sessions)

    def _refusal(self) -> Refusal | None:
        if self.draining:
            return Refusal(grpc.StatusCode.UNAVAILABLE,
                           f"this {self.service} replica is shutting down: open the stream on another replica",
                           Reason.REPLICA_DRAINING)
        if self.full:
            return Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"this {self.service} replica is full ({self.active}/{self.max_sessions} streams): "
                           "retry on another replica or later", Reason.REPLICA_FULL, FULL_RETRY_AFTER_S)
        return None

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self._prefixes):
            return handler
        if not handler.request_streaming and not handler.response_streaming:
            return self._count_errors_unary(handler)
        if not (handler.request_streaming and handler.response_streaming):
            return handler
        refusal = self._refusal()
        if refusal is not None:
            self._metrics.errors.labels(refusal.code.name).inc()
            return _aborting_handler(handler, refusal)
        return grpc.stream_stream_rpc_method_handler(
            self._admitted(handler.stream_stream, details.method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _count_errors_unary(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        behavior = handler.unary_unary
        metrics = self._metrics

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            finally:
                code = context.code()
                if code not in (None, grpc.StatusCode.OK, 0):
                    metrics.errors.labels(getattr(code, "name", str(code))).inc()

        return grpc.unary_unary_rpc_method_handler(wrapped, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)

    def _admitted(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        gate = self

        async def stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            # Re-check at start: the handler lookup and the call can interleave with other admissions.
            refusal = gate._refusal()
            if refusal is not None:
                gate._metrics.errors.labels(refusal.code.name).inc()
                await refusal.abort(context)
            gate.enter()
            started = time.monotonic()
            released = False

            def release(_context: object = None) -> None:
                # Runs from `finally` or, when grpc.aio abandons a cancelled handler without closing it,
                # from the RPC's done callback: whichever comes first.
                nonlocal released
                if released:
                    return
                released = True
                gate.leave()
                gate._metrics.active_sessions.set(gate.active)
                gate._metrics.session_seconds.observe(time.monotonic() - started)
                code = context.code()
                if code not in (None, grpc.StatusCode.OK, 0):
                    gate._metrics.errors.labels(getattr(code, "name", str(code))).inc()

            context.add_done_callback(release)
            # Headers now tell the client it was admitted (a refusal arrives as a trailers-only status),
            # so a router can try another replica before sending any work.
            await context.send_initial_metadata(((ADMITTED_HEADER, str(gate.active)),))
            gate._metrics.active_sessions.set(gate.active)
            gate._metrics.sessions.inc()
            try:
                async for response in behavior(request_iterator, context):
                    yield response
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                log.exception("%s failed", method)
                await errors.abort(
                    context, grpc.StatusCode.INTERNAL,
                    f"internal error in the {gate.service} service ({type(exc).__name__}: {exc}); "
                    "this stream was closed, other streams are unaffected",
                )
            finally:
                release()

        return stream
