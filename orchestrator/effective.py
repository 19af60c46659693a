"""What a session actually runs with: its config after the profile merge, with the defaults filled in.

Why: a client that sent a partial config (or none of a profile's fields) should not have to know the
orchestrator's defaults to learn what it got; `SessionStarted` sends this back as the first response.
The defaults are the orchestrator's own (settings, and the constants its session applies); a default
that belongs to a backend replica (the TTS voice, STT endpointing, LLM temperature/top_p) stays unset,
since the orchestrator cannot know it without asking.
"""

from __future__ import annotations

import socket
from importlib import metadata
from typing import TYPE_CHECKING

from voxgrid.orchestrator.tools import DEFAULT_FILLER_AFTER_MS, DEFAULT_TOOL_TIMEOUT_MS
from voxgrid.orchestrator.turn_taking import DEFAULT_MIN_INTERRUPTION_MS, DEFAULT_MIN_INTERRUPTION_WORDS

from voxgrid.v1 import agent_pb2

if TYPE_CHECKING:
    from voxgrid.orchestrator.settings import Settings

DEFAULT_LANGUAGE = "en"


def effective_config(config: agent_pb2.SessionConfig, session_id: str, settings: Settings) -> agent_pb2.SessionConfig:
    """A copy of `config` (already merged with its profile) with the orchestrator's defaults made explicit.

    DUPLEX sessions only get the fields the relay honours (mode, id, formats): the persona, voice, tools,
    sampling and turn taking of a pipeline do not apply to the speech-to-speech model.
    """
    eff = agent_pb2.SessionConfig()
    eff.CopyFrom(config)
    eff.session_id = session_id
    if eff.mode == agent_pb2.AGENT_MODE_UNSPECIFIED:
        eff.mode = agent_pb2.AGENT_MODE_PIPELINE
    if not eff.HasField("output_format") and eff.HasField("input_format"):
        eff.output_format.CopyFrom(eff.input_format)
    if eff.mode == agent_pb2.AGENT_MODE_DUPLEX:
        return eff
    if not eff.HasField("system_prompt"):
        eff.system_prompt = settings.default_system_prompt
    if not eff.HasField("language"):  # set to "" = detect (see SessionConfig.language)
        eff.language = DEFAULT_LANGUAGE
    if not eff.HasField("speed"):
        eff.speed = 1.0
    if not eff.sampling.HasField("max_tokens"):
        eff.sampling.max_tokens = settings.max_tokens
    tt = eff.turn_taking
    tt.min_interruption_words = tt.min_interruption_words or DEFAULT_MIN_INTERRUPTION_WORDS
    tt.min_interruption_ms = tt.min_interruption_ms or DEFAULT_MIN_INTERRUPTION_MS
    if not tt.HasField("allow_interruptions"):
        tt.allow_interruptions = True
    eff.context.max_history_tokens = eff.context.max_history_tokens or settings.max_history_tokens
    for tool in eff.tools:
        tool.timeout_ms = tool.timeout_ms or DEFAULT_TOOL_TIMEOUT_MS
        tool.filler_after_ms = tool.filler_after_ms or DEFAULT_FILLER_AFTER_MS
    return eff


def _version() -> str:
    try:
        return metadata.version("voxgrid")
    except metadata.PackageNotFoundError:
        return "unknown"


VERSION = _version()


def session_started(config: agent_pb2.SessionConfig, session_id: str, settings: Settings) -> agent_pb2.ConverseResponse:
    """The first response of a Converse stream."""
    return agent_pb2.ConverseResponse(session_started=agent_pb2.SessionStarted(
        session_id=session_id, config=effective_config(config, session_id, settings),
        server=socket.gethostname(), version=VERSION))
