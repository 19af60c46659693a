"""Wire ↔ engine conversion for the LLM service: validate protos into engine types, events into protos.

Validation raises `RequestError` with a message that says what was wrong and what to send instead;
the session turns it into a `RequestError` response for that request (the stream goes on).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import numpy as np
from voxgrid.services.llm import audio_input
from voxgrid.services.llm.engines.base import (
    INVALID_ARGUMENT,
    Event,
    Finished,
    FinishReason,
    Message,
    ModelDescription,
    PrewarmResult,
    RequestError,
    RequestFailed,
    Sampling,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    ToolSpec,
)

from voxgrid.v1 import audio_pb2, llm_pb2

_ROLE_NAMES = {
    llm_pb2.ROLE_SYSTEM: "system",
    llm_pb2.ROLE_USER: "user",
    llm_pb2.ROLE_ASSISTANT: "assistant",
    llm_pb2.ROLE_TOOL: "tool",
}
_FINISH = {
    FinishReason.STOP: llm_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: llm_pb2.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: llm_pb2.FINISH_REASON_CANCELLED,
    FinishReason.TOOL_CALLS: llm_pb2.FINISH_REASON_TOOL_CALLS,
    FinishReason.ERROR: llm_pb2.FINISH_REASON_ERROR,
}
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_DEFAULTS = Sampling()


def _invalid(message: str) -> RequestError:
    return RequestError(INVALID_ARGUMENT, message)


def messages_from_proto(
    messages: Sequence[llm_pb2.ChatMessage], model: ModelDescription
) -> tuple[Message, ...]:
    """Engine messages; audio is checked against ``model`` (can it hear, how much) and decoded to its rate."""
    if not messages:
        raise _invalid("`messages` is empty: send at least one message (e.g. a ROLE_USER message)")
    out = []
    for index, m in enumerate(messages):
        role = _ROLE_NAMES.get(m.role)
        if role is None:
            raise _invalid(
                f"messages[{index}].role is {llm_pb2.Role.Name(m.role) if m.role in llm_pb2.Role.values() else m.role}:"
                " use ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL"
            )
        audio: tuple[np.ndarray, ...] = ()
        rate = 0
        if m.HasField("audio"):
            where = f"messages[{index}]"
            speech = audio_input.check_audio_allowed(model, role, where)
            audio, rate = audio_input.decode_clip(m.audio, speech, where), speech.sample_rate_hz
        calls = tuple(ToolCall(c.id, c.name, c.arguments_json) for c in m.tool_calls)
        out.append(Message(role=role, content=m.content, tool_calls=calls, tool_call_id=m.tool_call_id,
                           audio=audio, audio_rate_hz=rate))
    return tuple(out)


def tools_from_proto(tools: Sequence[audio_pb2.ToolSchema]) -> tuple[ToolSpec, ...]:
    out = []
    for index, tool in enumerate(tools):
        if not _TOOL_NAME.match(tool.name):
            raise _invalid(f"tools[{index}].name {tool.name!r} must match [a-zA-Z0-9_-]{{1,64}}")
        parameters = {}
        if tool.parameters_json:
            try:
                parameters = json.loads(tool.parameters_json)
            except json.JSONDecodeError as exc:
                raise _invalid(
                    f"tools[{index}].parameters_json is not valid JSON ({exc}): send a JSON Schema object"
                ) from None
            if not isinstance(parameters, dict):
                raise _invalid(f"tools[{index}].parameters_json must be a JSON object (a JSON Schema)")
        out.append(ToolSpec(name=tool.name, description=tool.description, parameters=parameters))
    return tuple(out)


def sampling_from_proto(params: audio_pb2.SamplingParams) -> Sampling:
    sampling = Sampling(
        temperature=params.temperature if params.HasField("temperature") else _DEFAULTS.temperature,
        top_p=params.top_p if params.HasField("top_p") else _DEFAULTS.top_p,
        top_k=params.top_k if params.HasField("top_k") else _DEFAULTS.top_k,
        max_tokens=params.max_tokens if params.HasField("max_tokens") else _DEFAULTS.max_tokens,
        seed=params.seed if params.HasField("seed") else None,
        repetition_penalty=(
            params.repetition_penalty if params.HasField("repetition_penalty") else _DEFAULTS.repetition_penalty
        ),
    )
    problems = sampling.problems()
    if problems:
        raise _invalid("invalid sampling: " + "; ".join(problems))
    return sampling


def response_for(request_id: str, event: Event) -> llm_pb2.ChatResponse:
    """The ChatResponse carrying one engine event."""
    if isinstance(event, TextDelta):
        return llm_pb2.ChatResponse(request_id=request_id, delta=llm_pb2.TextDelta(text=event.text))
    if isinstance(event, ToolCallEvent):
        call = event.call
        return llm_pb2.ChatResponse(
            request_id=request_id,
            tool_call=audio_pb2.ToolCall(id=call.id, name=call.name, arguments_json=call.arguments_json),
        )
    if isinstance(event, RequestFailed):
        return error_response(request_id, event.code, event.message)
    if isinstance(event, Finished):
        return llm_pb2.ChatResponse(request_id=request_id, done=llm_pb2.GenerationDone(
            finish_reason=_FINISH[event.reason],
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
            cached_prompt_tokens=event.cached_prompt_tokens,
            time_to_first_token_ms=event.time_to_first_token_ms,
            queue_ms=event.queue_ms,
            total_ms=event.total_ms,
        ))
    raise TypeError(f"unknown engine event {event!r}")


def error_response(request_id: str, code: int, message: str) -> llm_pb2.ChatResponse:
    return llm_pb2.ChatResponse(request_id=request_id, error=llm_pb2.RequestError(code=code, message=message))


def failed_done(request_id: str) -> llm_pb2.ChatResponse:
    return response_for(request_id, Finished(FinishReason.ERROR))


def prewarm_response(result: PrewarmResult) -> llm_pb2.ChatResponse:
    return llm_pb2.ChatResponse(prewarmed=llm_pb2.PrewarmDone(
        prompt_tokens=result.prompt_tokens, latency_ms=result.latency_ms))


def model_info(description: ModelDescription) -> llm_pb2.LanguageModelInfo:
    info = llm_pb2.LanguageModelInfo(
        name=description.name, engine=description.engine, properties=description.properties,
        context_length=description.context_length,
    )
    info.adapters.extend(llm_pb2.LoraAdapterInfo(name=a.name, rank=a.rank, base_model=a.base_model)
                         for a in description.adapters)
    speech = description.speech_input
    if speech is not None:
        info.accepts_audio = True
        info.speech_input.CopyFrom(llm_pb2.SpeechInputSpec(
            sample_rate_hz=speech.sample_rate_hz, max_clip_ms=speech.max_clip_ms, max_audio_ms=speech.max_audio_ms,
            encodings=audio_input.CLIP_ENCODINGS, tokens_per_second=speech.tokens_per_second,
        ))
    return info
