"""Every status the chassis raises carries google.rpc details a client can switch on (real loopback gRPC)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from tests.e2e.test_chassis import Conversation, refusal, settings
from voxgrid.client import channel
from voxgrid.errors import (
    DETAILS_KEY,
    DOMAIN,
    RETRY_AFTER_KEY,
    ErrorDetails,
    Reason,
    details_of,
    parse_error,
    status_proto,
)
from voxgrid.server.chassis import start_server
from voxgrid.server.echo import EchoRuntime
from voxgrid.v1 import echo_pb2, echo_pb2_grpc, errors_pb2

pytestmark = pytest.mark.e2e


def _info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The raw ErrorInfo off the wire, read without voxgrid's helper (any gRPC client can do this)."""
    blob = dict(err.trailing_metadata())[DETAILS_KEY]
    status = status_pb2.Status.FromString(blob)
    assert status.code == err.code().value[0] and status.message == err.details()
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status.details)
    return info


async def test_a_full_replica_sends_retry_info_and_the_deprecated_trailer() -> None:
    async with start_server(EchoRuntime(), settings(max_sessions=1)) as srv, channel(srv.address) as ch:
        held = Conversation(ch, "held")
        await held.roundtrip(b"1")
        err = await refusal(ch)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(err.trailing_metadata())[RETRY_AFTER_KEY] == "1000"  # deprecated, kept one release
        info = _info(err)
        assert (info.reason, info.domain) == ("REPLICA_FULL", DOMAIN)
        parsed = parse_error(err)
        assert parsed.reason == Reason.REPLICA_FULL and parsed.retry_after_s == 1.0
        assert parsed.field_violations == []
        assert await held.close() == grpc.StatusCode.OK


async def test_credentials_problems_have_distinct_reasons() -> None:
    async with start_server(EchoRuntime(), settings(auth_tokens="right")) as srv:
        async with channel(srv.address) as anonymous:
            missing = await refusal(anonymous)
        async with channel(srv.address, token="wrong") as wrong_token:
            wrong = await refusal(wrong_token)
        for err, reason in ((missing, "MISSING_CREDENTIALS"), (wrong, "INVALID_CREDENTIALS")):
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            assert _info(err).reason == reason and parse_error(err).reason == reason
            assert parse_error(err).retry_after_s is None


async def test_a_protocol_error_names_the_field_to_send() -> None:
    async with start_server(EchoRuntime(), settings()) as srv, channel(srv.address) as ch:
        async def frame_first():
            yield echo_pb2.EchoRequest(frame=b"no config")

        with pytest.raises(grpc.aio.AioRpcError) as err:
            [r async for r in echo_pb2_grpc.EchoStub(ch).Stream(frame_first())]
        parsed = parse_error(err.value)
        assert parsed.code == grpc.StatusCode.INVALID_ARGUMENT and parsed.reason == Reason.INVALID_REQUEST
        assert parsed.fields == ["config"]
        assert "first message must carry `config`" in parsed.field_violations[0].description


def test_the_helper_reads_legacy_trailers_and_ignores_a_mismatched_status() -> None:
    # An older replica: only the deprecated trailer.
    legacy = details_of(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", ((RETRY_AFTER_KEY, "250"),))
    assert legacy == ErrorDetails(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", retry_after_s=0.25)
    # RetryInfo wins over the trailer; a status for another code (a proxy's) is not trusted.
    status = status_proto(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", reason=Reason.REPLICA_FULL, retry_after_s=2)
    both = ((DETAILS_KEY, status.SerializeToString()), (RETRY_AFTER_KEY, "250"))
    assert details_of(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", both).retry_after_s == 2.0
    assert details_of(grpc.StatusCode.UNAVAILABLE, "x", both).reason == ""
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2))
    assert status.details[-1].Unpack(retry) and retry.retry_delay.seconds == 2


def test_every_reason_is_listed_in_the_proto_enum() -> None:
    names = {v.name.removeprefix("ERROR_REASON_") for v in errors_pb2.ErrorReason.DESCRIPTOR.values}
    assert names - {"UNSPECIFIED"} == {r.value for r in Reason}
