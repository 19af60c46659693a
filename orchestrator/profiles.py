"""Agent profiles, one home: named partial SessionConfigs the orchestrator serves, merged under a session.

A profile file (YAML or JSON; in the chart a ConfigMap mounted at `profiles_file`) maps a name to the
protobuf JSON form of `voxgrid.v1.SessionConfig` plus an optional `description`, so a profile has exactly
the knobs of the Agent API and no second schema to keep in step:

    support:
      description: Acme support line
      systemPrompt: You are the support line of Acme. Answer briefly.
      greeting: Acme support, how can I help?
      voice: joe
      speed: 1.1
      adapter: support
      turnTaking: {minInterruptionWords: 3}

A session names one in `SessionConfig.profile`; the fields it sets itself override the profile's (see
`merge`). The file is checked whole at start (a bad one stops the orchestrator, naming the profile and
field) and re-read when its modification time changes, at the next session start, off the event loop: a
changed file applies to new sessions without a restart, and a broken edit keeps the last good profiles
(logged) instead of breaking every new call.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from voxgrid.orchestrator.language import check_answer_languages
from voxgrid.orchestrator.modes import check_mode_fields

from voxgrid.v1 import agent_pb2

log = logging.getLogger("voxgrid.orchestrator.profiles")

# What each call sets for itself: a profile saying it would be overridden every time, or meaningless.
SESSION_OWNED = ("input_format", "output_format", "session_id", "profile")


class ProfileError(ValueError):
    """A profile file, profile or profile name is wrong; the message names it and what to change."""


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    config: agent_pb2.SessionConfig

    def summary(self) -> agent_pb2.ProfileSummary:
        c = self.config
        return agent_pb2.ProfileSummary(name=self.name, description=self.description, mode=c.mode,
                                        language=c.language, voice=c.voice, adapter=c.adapter)


def check_values(config: agent_pb2.SessionConfig) -> None:
    """Range checks of the knobs a profile or a session can set; ValueError says which and the range."""
    if config.mode not in agent_pb2.AgentMode.values():
        raise ValueError(f"mode {config.mode} is unknown: use AGENT_MODE_PIPELINE, AGENT_MODE_DUPLEX or "
                         "AGENT_MODE_HYBRID")
    s = config.sampling
    if s.HasField("temperature") and not 0 <= s.temperature <= 2:
        raise ValueError(f"sampling.temperature {s.temperature} is out of range [0, 2]")
    if s.HasField("top_p") and not 0 < s.top_p <= 1:
        raise ValueError(f"sampling.top_p {s.top_p} is out of range (0, 1]")
    if s.HasField("max_tokens") and not 1 <= s.max_tokens <= 8192:
        raise ValueError(f"sampling.max_tokens {s.max_tokens} is out of range [1, 8192]")
    if config.HasField("speed") and not 0.5 <= config.speed <= 2.0:
        raise ValueError(f"speed {config.speed:g} is out of range [0.5, 2.0]")
    check_answer_languages(config)


def parse_profile(name: str, doc: Any) -> Profile:
    """One profile from its document; ProfileError names the profile and the field."""
    if not isinstance(doc, dict):
        raise ProfileError(f"profile {name!r} must be a mapping of SessionConfig fields, not {type(doc).__name__}")
    doc = dict(doc)
    description = doc.pop("description", "")
    if not isinstance(description, str):
        raise ProfileError(f"profile {name!r}: description must be a string")
    config = agent_pb2.SessionConfig()
    try:
        json_format.ParseDict(doc, config)
    except json_format.ParseError as exc:
        raise ProfileError(f"profile {name!r}: {exc}") from exc
    owned = [f for f in SESSION_OWNED if (config.HasField(f) if f.endswith("_format") else getattr(config, f))]
    if owned:
        raise ProfileError(f"profile {name!r} sets {', '.join(owned)}: each call sets those itself; remove them")
    try:
        check_values(config)
        check_mode_fields(config)  # a DUPLEX profile with a persona, tools, ...: refused, not silently dropped
    except ValueError as exc:
        raise ProfileError(f"profile {name!r}: {exc}") from exc
    return Profile(name, description, config)


def parse_profiles(text: str, source: str) -> dict[str, Profile]:
    """A whole profile file (YAML, of which JSON is a subset): {name: SessionConfig fields}."""
    if not text.strip():
        return {}
    try:
        docs = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{source} is neither valid YAML nor JSON: {exc}") from exc
    if docs is None:
        return {}
    if not isinstance(docs, dict):
        raise ProfileError(f"{source} must map profile names to SessionConfig fields, not a {type(docs).__name__}")
    return {str(name): parse_profile(str(name), doc) for name, doc in docs.items()}


def merge(profile: agent_pb2.SessionConfig, session: agent_pb2.SessionConfig) -> agent_pb2.SessionConfig:
    """The session's config laid over the profile's.

    A field with presence set by the session wins even when set to "" (so a session can say "no greeting"),
    a field without presence wins when non-zero, message fields merge field by field (a session setting
    only `sampling.temperature` keeps the profile's `top_p`), and tools, when the session gives any,
    replace the profile's whole list (a tool list is one decision, not two to append).
    """
    merged = agent_pb2.SessionConfig()
    merged.CopyFrom(profile)
    if session.tools:
        del merged.tools[:]
    merged.MergeFrom(session)
    if session.HasField("answer_languages"):  # one decision, like tools: the session's replaces the profile's
        merged.answer_languages.CopyFrom(session.answer_languages)
    return merged


class ProfileStore:
    """The profiles of this orchestrator, re-read when the file changes (checked at each session start)."""

    def __init__(self, path: Path | None, default: str = "") -> None:
        self.path = path
        self.default = default
        self._profiles: dict[str, Profile] = {}
        self._stamp: tuple[float, int] | None = None
        self._lock = asyncio.Lock()

    def load(self) -> None:
        """Read the file now (at start): a missing or bad file is an error that stops the replica."""
        if self.path is None:
            if self.default:
                raise ProfileError(f"default_profile {self.default!r} is set but there is no profiles_file")
            return
        stamp = self._stat()
        if stamp is None:
            raise ProfileError(f"profiles_file {self.path} does not exist")
        self._install(self._read(), stamp)

    def _stat(self) -> tuple[float, int] | None:
        try:
            st = os.stat(self.path) if self.path is not None else None
        except FileNotFoundError:
            return None
        return (st.st_mtime, st.st_size) if st else None

    def _read(self) -> dict[str, Profile]:
        assert self.path is not None
        return parse_profiles(self.path.read_text(), f"profiles_file {self.path}")

    def _install(self, profiles: dict[str, Profile], stamp: tuple[float, int] | None) -> None:
        if self.default and self.default not in profiles:
            raise ProfileError(f"default_profile {self.default!r} is not among the profiles ({_names(profiles)})")
        self._profiles, self._stamp = profiles, stamp
        log.info("agent profiles: %s", _names(profiles))

    async def refresh(self) -> None:
        """Re-read the file if it changed since the last read; the event loop never waits on the disk."""
        if self.path is None:
            return
        async with self._lock:
            stamp = await asyncio.to_thread(self._stat)
            if stamp == self._stamp or stamp is None:
                return
            try:
                profiles = await asyncio.to_thread(self._read)
                self._install(profiles, stamp)
            except (ProfileError, OSError) as exc:
                self._stamp = stamp  # report a broken edit once, not at every call
                log.error("profiles_file changed but cannot be used, keeping the last good profiles (%s): %s",
                          _names(self._profiles), exc)

    @property
    def names(self) -> list[str]:
        return sorted(self._profiles)

    def profiles(self) -> list[Profile]:
        return [self._profiles[n] for n in self.names]

    def get(self, name: str) -> Profile:
        if name not in self._profiles:
            raise ProfileError(f"profile {name!r} is unknown: use one of {_names(self._profiles)}")
        return self._profiles[name]

    async def resolve(self, session: agent_pb2.SessionConfig) -> agent_pb2.SessionConfig:
        """The config a session runs with: its profile (or the default one) with its own fields over it."""
        await self.refresh()
        name = session.profile or self.default
        if not name:
            return session
        merged = merge(self.get(name).config, session)
        merged.profile = name
        return merged


def _names(profiles: dict[str, Any]) -> str:
    return ", ".join(sorted(profiles)) or "none configured"

