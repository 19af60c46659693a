"""Which SessionConfig fields each mode can honour, so a field a mode cannot honour is refused, not dropped.

The DUPLEX relay talks to a speech-to-speech model (Moshi) that takes audio only: it has no system
prompt, no tools, no voice choice, no greeting, no sampling knobs, no turn taking (it listens while it
speaks) and no STT endpointing. A client that sets one of those for a DUPLEX session gets
INVALID_ARGUMENT naming the field, instead of a call that silently ignores it.

The merged config (the client's fields over the profile's) is checked: a field the client set is
named as such; one from a profile made for another mode is the client's choice of that profile in
DUPLEX mode, and the error names `profile`. A DUPLEX profile that carries pipeline fields is refused
when the profiles file is loaded (`profiles.parse_profile`), so nothing is ever silently dropped.
"""

from __future__ import annotations

from voxgrid.errors import ConfigError
from voxgrid.v1 import agent_pb2

# SessionConfig fields a DUPLEX session cannot honour (each field's comment in agent.proto says so too).
PIPELINE_ONLY = ("system_prompt", "voice", "tools", "greeting", "sampling", "turn_taking", "endpointing",
                 "adapter", "speed", "context", "idle", "answer_languages")


def _is_set(config: agent_pb2.SessionConfig, name: str) -> bool:
    field = config.DESCRIPTOR.fields_by_name[name]
    if field.is_repeated:
        return bool(getattr(config, name))
    if field.has_presence:
        return config.HasField(name)
    return bool(getattr(config, name))


def unsupported_fields(config: agent_pb2.SessionConfig, mode: int) -> list[str]:
    """The fields set in `config` that `mode` cannot honour (empty when all apply)."""
    if mode != agent_pb2.AGENT_MODE_DUPLEX:
        return []
    fields = [name for name in PIPELINE_ONLY if _is_set(config, name)]
    if config.language not in ("", "en"):  # the duplex model speaks English only
        fields.append("language")
    return fields


def check_mode_fields(config: agent_pb2.SessionConfig, client: agent_pb2.SessionConfig | None = None) -> None:
    """ConfigError naming the first field of `config` (the merged one) that its mode cannot honour.

    A field the client set is named as such; one that came from the profile is the profile's mismatch
    with the mode the client asked for, so the error names `profile`.
    """
    fields = unsupported_fields(config, config.mode)
    if not fields:
        return
    mode = agent_pb2.AgentMode.Name(config.mode)
    own = [f for f in fields if client is None or _is_set(client, f)]
    if own:
        raise ConfigError(own[0], f"{own[0]} does not apply in {mode} (the speech-to-speech model takes audio "
                          f"only; it has no {', '.join(own)}): leave it unset, or use AGENT_MODE_PIPELINE")
    raise ConfigError("profile", f"profile {config.profile!r} sets {', '.join(fields)}, which do not apply in "
                      f"{mode}: use a profile made for {mode}, or AGENT_MODE_PIPELINE")


def strip_unsupported(config: agent_pb2.SessionConfig, mode: int) -> None:
    """Clear what `mode` does not use (the effective config then shows only what applies)."""
    for name in unsupported_fields(config, mode):
        config.ClearField(name)
