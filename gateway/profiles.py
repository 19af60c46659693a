"""Agent profiles: a name (what a phone number or page asks for) mapped to a partial SessionConfig.

A profile is written in the protobuf JSON form of `voxgrid.v1.SessionConfig`, so every knob the Agent API
has (persona, voice, greeting, tools, sampling, turn taking) can go in one without a second schema. The
gateway owns the audio formats and the session id of its calls, so a profile may not set them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from voxgrid.v1 import agent_pb2

GATEWAY_OWNED = ("input_format", "output_format", "session_id", "profile")


class ProfileError(ValueError):
    """A profile is unknown or malformed; the message names it and what to fix."""


def parse_profile(name: str, doc: Any) -> agent_pb2.SessionConfig:
    if not isinstance(doc, dict):
        raise ProfileError(f"profile {name!r} must be a JSON object of SessionConfig fields, not {type(doc).__name__}")
    config = agent_pb2.SessionConfig()
    try:
        json_format.ParseDict(doc, config)
    except json_format.ParseError as exc:
        raise ProfileError(f"profile {name!r}: {exc}") from exc
    owned = [f for f in GATEWAY_OWNED if (config.HasField(f) if f.endswith("_format") else getattr(config, f))]
    if owned:
        raise ProfileError(f"profile {name!r} sets {', '.join(owned)}: the gateway sets those per call; remove them")
    return config


class Profiles:
    """The named profiles of this gateway, checked once at start-up."""

    def __init__(self, profiles: dict[str, agent_pb2.SessionConfig], default: str = "") -> None:
        if default and default not in profiles:
            raise ProfileError(f"default_profile {default!r} is not among the profiles ({self._names(profiles)})")
        self._profiles = profiles
        self.default = default

    @staticmethod
    def _names(profiles: dict[str, Any]) -> str:
        return ", ".join(sorted(profiles)) or "none configured"

    @classmethod
    def from_settings(cls, inline: str, file: Path | None, default: str) -> Profiles:
        docs: dict[str, Any] = {}
        for source, text in (("profiles_file", file.read_text() if file else ""), ("profiles", inline)):
            if not text.strip():
                continue
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ProfileError(f"{source} is not valid JSON: {exc}") from exc
            if not isinstance(loaded, dict):
                raise ProfileError(f"{source} must be a JSON object mapping profile names to SessionConfig fields")
            docs.update(loaded)
        return cls({name: parse_profile(name, doc) for name, doc in docs.items()}, default)

    @property
    def names(self) -> list[str]:
        return sorted(self._profiles)

    def session_config(self, name: str) -> agent_pb2.SessionConfig:
        """A fresh copy of the named profile (empty name = the default profile, or plain defaults)."""
        name = name or self.default
        config = agent_pb2.SessionConfig()
        if not name:
            return config
        if name not in self._profiles:
            raise ProfileError(f"profile {name!r} is unknown: use one of {self._names(self._profiles)}")
        config.CopyFrom(self._profiles[name])
        return config
