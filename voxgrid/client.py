"""Client-side plumbing shared by the CLI, the orchestrator's backend links, tests and the load tester."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class _BearerAuth(grpc.AuthMetadataPlugin):
    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        callback((("authorization", f"Bearer {self._token}"),), None)


def channel(
    target: str,
    token: str | None = None,
    tls: bool | Path | None = None,
    max_message_bytes: int = 4 * 1024 * 1024,
) -> grpc.aio.Channel:
    """An aio channel to a voxgrid replica; `tls` may be True (system roots) or a CA bundle path."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 20000),
    ]
    if tls:
        roots = Path(tls).read_bytes() if isinstance(tls, Path) else None
        creds = grpc.ssl_channel_credentials(root_certificates=roots)
        if token:
            creds = grpc.composite_channel_credentials(creds, grpc.metadata_call_credentials(_BearerAuth(token)))
        return grpc.aio.secure_channel(target, creds, options=options)
    # Call credentials need a secure channel; on plaintext (loopback, inside a mesh) the header goes
    # through an interceptor instead.
    kinds = (_StreamStreamBearer, _UnaryUnaryBearer, _UnaryStreamBearer)
    interceptors = [kind(token) for kind in kinds] if token else None
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


class _TokenMetadata:
    def __init__(self, token: str) -> None:
        self._md = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        md = grpc.aio.Metadata(*(tuple(details.metadata or ())), self._md)
        return grpc.aio.ClientCallDetails(details.method, details.timeout, md, details.credentials,
                                          details.wait_for_ready)


# grpc.aio files each interceptor under the first call type it implements, so one class per type.
class _StreamStreamBearer(_TokenMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return await continuation(self._with_token(details), request_iterator)


class _UnaryUnaryBearer(_TokenMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._with_token(details), request)


class _UnaryStreamBearer(_TokenMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._with_token(details), request)


async def health_status(ch: grpc.aio.Channel, service: str = "", timeout_s: float = 2.0) -> str:
    """SERVING / NOT_SERVING / UNKNOWN / SERVICE_UNKNOWN, or UNAVAILABLE when nothing answers."""
    try:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service),
                                                          timeout=timeout_s)
    except grpc.aio.AioRpcError as err:
        return err.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
