"""In-stream problems as `SessionNotice`s: a standard `google.rpc.Status` and a typed stage.

Why a module: every notice the session sends (a refused input, a failed tool, a reconnected stage, a
refused live-control message) must read the same way to a client, which switches on
`status` (code + ErrorInfo reason) and `stage_kind`. The deprecated `code`/`message`/`stage` fields are
filled from the same values for one release.
"""

from __future__ import annotations

import grpc

from voxgrid.errors import FieldViolation, Reason, status_proto
from voxgrid.v1 import agent_pb2

_STAGES: dict[str, agent_pb2.NoticeStage.ValueType] = {
    "stt": agent_pb2.NOTICE_STAGE_STT,
    "llm": agent_pb2.NOTICE_STAGE_LLM,
    "tts": agent_pb2.NOTICE_STAGE_TTS,
    "duplex": agent_pb2.NOTICE_STAGE_DUPLEX,
    "tool": agent_pb2.NOTICE_STAGE_TOOL,
    "input": agent_pb2.NOTICE_STAGE_INPUT,
    "control": agent_pb2.NOTICE_STAGE_CONTROL,
    "session": agent_pb2.NOTICE_STAGE_SESSION,
}
_BACKENDS = ("stt", "llm", "tts", "duplex")


def stage_kind(stage: str) -> tuple[agent_pb2.NoticeStage.ValueType, str]:
    """("tool:lookup" -> TOOL, "lookup"); ("llm" -> LLM, ""); anything unknown -> SESSION."""
    name, _, tool = stage.partition(":")
    return _STAGES.get(name, agent_pb2.NOTICE_STAGE_SESSION), tool if name == "tool" else ""


def notice_reason(code: grpc.StatusCode, stage: str) -> Reason:
    """The ErrorInfo reason a notice gets when its sender names none.

    input: over a size limit or budget (INVALID_ARGUMENT) or too fast (RESOURCE_EXHAUSTED); tool: the tool
    failed; a backend stage: UNAVAILABLE is only ever sent as a notice when the session moved to another
    replica (a stage lost for good ends the stream instead), anything else failed this turn.
    """
    name = stage.partition(":")[0]
    if name == "input":
        return Reason.RATE_LIMITED if code == grpc.StatusCode.RESOURCE_EXHAUSTED else Reason.INPUT_TOO_LARGE
    if name == "tool":
        return Reason.TOOL_FAILED
    if name in _BACKENDS:
        return Reason.STAGE_RECONNECTED if code == grpc.StatusCode.UNAVAILABLE else Reason.STAGE_FAILED
    if name == "control":
        return Reason.INVALID_REQUEST if code == grpc.StatusCode.INVALID_ARGUMENT else Reason.RATE_LIMITED
    return Reason.INTERNAL


def session_notice(code: grpc.StatusCode, message: str, stage: str, *, reason: Reason | str | None = None,
                   field: str | None = None) -> agent_pb2.SessionNotice:
    """A notice with the new fields (status, stage_kind, tool_name) and the deprecated ones, all filled.

    `field` (e.g. `update.field_mask.paths[0]`) adds a BadRequest violation for a refused message.
    """
    kind, tool = stage_kind(stage)
    status = status_proto(code, message, reason=reason or notice_reason(code, stage),
                          violations=[FieldViolation(field, message)] if field else ())
    return agent_pb2.SessionNotice(code=code.value[0], message=message, stage=stage, status=status,
                                   stage_kind=kind, tool_name=tool)
