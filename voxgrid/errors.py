"""voxgrid's error model: every status a voxgrid service raises carries standard `google.rpc` details.

Why one module: a client should handle errors by code and reason, not by parsing English. Every
status gets an `ErrorInfo` (domain `voxgrid.dev`, a stable `Reason`), a config or request problem a
`BadRequest` naming the field, and a refusal worth retrying a `RetryInfo`. They travel the standard
way (a serialised `google.rpc.Status` in the `grpc-status-details-bin` trailer), so any gRPC client's
status-details support reads them; `parse_error` is the Python side of that for voxgrid's own clients.

The server side is `abort` (a handler ends its RPC) and `status_proto` (a status inside a stream, such as
a `SessionNotice`); `voxgrid.server.streams.StreamError` carries the same fields from a stream's tasks.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.descriptor import Descriptor
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "voxgrid.dev"
DETAILS_KEY = "grpc-status-details-bin"
# Deprecated (kept for one release): a full replica's retry delay as a plain trailer, in ms. Read RetryInfo.
RETRY_AFTER_KEY = "retry-after-ms"


class Reason(enum.StrEnum):
    """`ErrorInfo.reason` values: stable, UPPER_SNAKE, never renamed (clients switch on them).

    `protos/voxgrid/v1/errors.proto` lists the same names (as `ERROR_REASON_<NAME>`) for other languages.
    """

    INVALID_CONFIG = "INVALID_CONFIG"            # the stream's config: a field is wrong (BadRequest names it)
    INVALID_REQUEST = "INVALID_REQUEST"          # a later message broke the stream's protocol, or a bad request
    INPUT_TOO_LARGE = "INPUT_TOO_LARGE"          # a turn or text over a size limit or the context budget
    RATE_LIMITED = "RATE_LIMITED"                # messages faster than the session's rate limits
    MISSING_CREDENTIALS = "MISSING_CREDENTIALS"  # no `authorization` metadata
    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"  # a token this deployment did not issue
    REPLICA_FULL = "REPLICA_FULL"                # the replica runs its max sessions: RetryInfo says when
    REPLICA_DRAINING = "REPLICA_DRAINING"        # the replica is shutting down: open the stream elsewhere
    MODEL_LOADING = "MODEL_LOADING"              # the replica is still loading its model
    STAGE_UNAVAILABLE = "STAGE_UNAVAILABLE"      # a backend stage (stt/llm/tts/duplex) cannot be reached
    STAGE_RECONNECTED = "STAGE_RECONNECTED"      # a backend replica was lost, the session moved on (notice)
    STAGE_FAILED = "STAGE_FAILED"                # a backend stage failed on this turn (notice)
    TOOL_FAILED = "TOOL_FAILED"                  # a tool failed or timed out; the agent said so (notice)
    NOT_CONFIGURED = "NOT_CONFIGURED"            # a feature this deployment has not set up (e.g. duplex)
    NOT_IMPLEMENTED = "NOT_IMPLEMENTED"          # a feature this version does not have yet
    TIMED_OUT = "TIMED_OUT"                      # something took longer than its deadline
    INTERNAL = "INTERNAL"                        # a bug: the message says what failed; report it


# The reason a status gets when the code that raises it does not say one.
_DEFAULT_REASON: dict[grpc.StatusCode, Reason] = {
    grpc.StatusCode.INVALID_ARGUMENT: Reason.INVALID_REQUEST,
    grpc.StatusCode.OUT_OF_RANGE: Reason.INVALID_REQUEST,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Reason.RATE_LIMITED,
    grpc.StatusCode.UNAUTHENTICATED: Reason.INVALID_CREDENTIALS,
    grpc.StatusCode.UNAVAILABLE: Reason.STAGE_UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION: Reason.NOT_CONFIGURED,
    grpc.StatusCode.UNIMPLEMENTED: Reason.NOT_IMPLEMENTED,
    grpc.StatusCode.DEADLINE_EXCEEDED: Reason.TIMED_OUT,
}


def default_reason(code: grpc.StatusCode) -> Reason:
    return _DEFAULT_REASON.get(code, Reason.INTERNAL)


@dataclass(frozen=True)
class FieldViolation:
    """`field` is a dotted path into the request as sent, e.g. `config.sampling.temperature`."""

    field: str
    description: str


class ConfigError(ValueError):
    """A config value a client must change; `field` is its path (relative to the config message)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


_LEADING_PATH = re.compile(r"^([a-z_][a-z0-9_]*(?:\[\d+\])?(?:\.[a-z_][a-z0-9_]*(?:\[\d+\])?)*)")


def config_field(exc: BaseException, descriptor: Descriptor) -> str | None:
    """The field a config error is about: `exc.field` of a ConfigError, else the dotted path its message
    starts with ("sampling.top_p 2 is out of range", "tools[1] (x): ..."), kept only as far as it names
    real fields of `descriptor`, so a violation never points at a field that does not exist."""
    named = getattr(exc, "field", None)
    if isinstance(named, str) and named:
        return named
    match = _LEADING_PATH.match(str(exc))
    if match is None:
        return None
    parts: list[str] = []
    current: Descriptor | None = descriptor
    for part in match.group(1).split("."):
        fd = current.fields_by_name.get(part.split("[")[0]) if current is not None else None
        if fd is None:
            break
        parts.append(part)
        current = fd.message_type
    return ".".join(parts) or None


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_proto(
    code: grpc.StatusCode, message: str, *, reason: Reason | str | None = None,
    violations: tuple[FieldViolation, ...] | list[FieldViolation] = (), retry_after_s: float | None = None,
    metadata: dict[str, str] | None = None,
) -> status_pb2.Status:
    """A `google.rpc.Status` with ErrorInfo always, BadRequest when fields are named, RetryInfo when given."""
    info = error_details_pb2.ErrorInfo(reason=str(reason or default_reason(code)), domain=DOMAIN,
                                       metadata=metadata or {})
    details = [_pack(info)]
    if violations:
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in violations])))
    if retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(retry_after_s * 1000))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=code.value[0], message=message, details=details)


def trailers(status: status_pb2.Status, retry_after_s: float | None = None) -> tuple[tuple[str, Any], ...]:
    """Trailing metadata carrying `status`, plus the deprecated `retry-after-ms` trailer when retrying helps."""
    out: list[tuple[str, Any]] = list(rpc_status.to_status(status).trailing_metadata)  # grpc-status-details-bin
    if retry_after_s is not None:
        out.append((RETRY_AFTER_KEY, str(int(retry_after_s * 1000))))
    return tuple(out)


async def abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, *,
    reason: Reason | str | None = None, field: str | None = None,
    violations: tuple[FieldViolation, ...] | list[FieldViolation] = (), retry_after_s: float | None = None,
    metadata: dict[str, str] | None = None,
) -> NoReturn:
    """End the RPC with `code`, `message` and its google.rpc details. `field` is shorthand for one violation."""
    if field is not None:
        violations = [FieldViolation(field, message), *violations]
    status = status_proto(code, message, reason=reason, violations=violations, retry_after_s=retry_after_s,
                          metadata=metadata)
    await context.abort(code, message, trailing_metadata=trailers(status, retry_after_s))
    raise AssertionError("unreachable")  # context.abort always raises


@dataclass
class ErrorDetails:
    """What a client can act on, read from a status (a failed RPC or a `SessionNotice.status`)."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[FieldViolation] = field(default_factory=list)
    # From RetryInfo, else from the deprecated `retry-after-ms` trailer; None = retrying will not help.
    retry_after_s: float | None = None

    @property
    def fields(self) -> list[str]:
        return [v.field for v in self.field_violations]


def _code(number: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == number), grpc.StatusCode.UNKNOWN)


def from_status(status: status_pb2.Status) -> ErrorDetails:
    """Unpack a `google.rpc.Status` (ErrorInfo, BadRequest, RetryInfo; other details are ignored)."""
    out = ErrorDetails(_code(status.code), status.message)
    for detail in status.details:
        info, bad, retry = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest(), error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            out.reason, out.domain, out.metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Unpack(bad):
            out.field_violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Unpack(retry):
            out.retry_after_s = retry.retry_delay.ToMilliseconds() / 1000
    return out


def parse_error(err: grpc.RpcError) -> ErrorDetails:
    """(reason, field violations, retry delay, ...) of a failed call; works for any status, details or not."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    message = (err.details() if callable(getattr(err, "details", None)) else "") or ""
    trailing = err.trailing_metadata() if callable(getattr(err, "trailing_metadata", None)) else None
    return details_of(code, message, trailing)


def details_of(code: grpc.StatusCode, message: str, trailing: Any) -> ErrorDetails:
    """The same from a status's parts (e.g. a `grpc.aio` call's code(), details(), trailing_metadata())."""
    pairs = list(trailing or ())
    blob = next((v for k, v in pairs if k == DETAILS_KEY), None)
    out = ErrorDetails(code, message)
    if blob is not None:
        status = status_pb2.Status.FromString(blob)
        if status.code == code.value[0]:  # a status for another code would be a proxy's or a bug: ignore it
            out = from_status(status)
            out.message = message or out.message
    if out.retry_after_s is None:
        legacy = next((v for k, v in pairs if k == RETRY_AFTER_KEY), None)
        if isinstance(legacy, str) and legacy.isdigit():
            out.retry_after_s = int(legacy) / 1000
    return out
