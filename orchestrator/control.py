"""Live control of a running session: `update` its configuration, `say` a text, `add_message` to the context.

Why a collaborator of its own: each of these is a client message that changes what the session will
do next, and each must be answered on its own (accepted, or refused by a notice naming the field)
without ever ending the call. The session admits them (size and rate, like typed text); this module
checks what they ask and applies it between events, so an answer already being written keeps the
persona, tools and sampling it started with.

Ordering: `say` speaks as soon as the agent is free (no turn in flight, the caller not speaking),
else right after; `add_message` applies at once unless an agent turn is in flight, else right after it
(so the history keeps its order: the turn's answer, then the added message). Both keep their order
with each other in one queue.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import field_mask_pb2
from voxgrid.orchestrator.context import estimate_tokens
from voxgrid.orchestrator.effective import effective_config
from voxgrid.orchestrator.limits import user_turn_problem
from voxgrid.orchestrator.profiles import ProfileError, check_values
from voxgrid.orchestrator.routing import BackendError, StageStream
from voxgrid.orchestrator.state import State
from voxgrid.orchestrator.tools import ToolRunner

from voxgrid.errors import Reason, config_field
from voxgrid.v1 import agent_pb2, audio_pb2, tts_pb2

if TYPE_CHECKING:
    from voxgrid.orchestrator.app import AgentRuntime
    from voxgrid.orchestrator.catalog import BackendCatalog
    from voxgrid.orchestrator.session import PipelineSession

# Paths an update may name (a sub-path of a message field is fine: `sampling.temperature`).
UPDATABLE = ("system_prompt", "tools", "sampling", "turn_taking", "idle", "profile", "voice", "speed")
# Applied from the next agent turn: a TTS stream with the new voice is opened, and swapped in once no turn
# is in flight (the turn being spoken keeps its voice).
NEXT_TURN = ("voice", "speed")
# Fixed for the call on this version: STT's stream carries the caller's audio without a gap.
FIXED_FOR_CALL = ("endpointing",)
# What a profile switch replaces; the rest of a profile cannot change mid-call and is reported as kept.
PROFILE_SWITCHED = ("system_prompt", "tools", "sampling", "turn_taking", "idle")
PROFILE_KEPT = ("voice", "speed", "adapter", "language", "endpointing", "edge_audio", "greeting", "answer_languages")
ROLES = ("user", "assistant", "system")
MAX_PENDING = 8  # queued say/add_message operations waiting for the turn in flight


class Refused(Exception):
    """A live-control message that is not applied: the notice's code, message, field and reason."""

    def __init__(self, code: grpc.StatusCode, message: str, field: str, reason: Reason | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field, self.reason = code, message, field, reason


class LiveControl:
    """Applies `update`, `say` and `add_message` to one pipeline session."""

    def __init__(self, session: PipelineSession) -> None:
        self.s = session
        self.runtime: AgentRuntime | None = None
        self.catalog: BackendCatalog | None = None
        self._voice_change: asyncio.Task[None] | None = None  # opening a TTS stream for a new voice
        self._new_tts: tuple[StageStream, tts_pb2.SynthesizeRequest] | None = None  # opened, waiting for the turn
        self.persona = session.conversation.system_prompt
        self.pinned: list[str] = []  # system messages added mid-call, pinned after the persona
        self._pending: deque[tuple[str, Any]] = deque()

    def attach(self, runtime: AgentRuntime, catalog: BackendCatalog | None = None) -> None:
        """The orchestrator's profiles and settings (profile switches, effective config, default persona) and
        what the stages offer (a new voice is checked against the TTS replicas' voices)."""
        self.runtime = runtime
        self.catalog = catalog

    def handlers(self) -> dict[str, Callable[[Any], None]]:
        return {"voice_ready": self._on_voice_ready}

    def close(self) -> None:
        if self._voice_change is not None:
            self._voice_change.cancel()
        if self._new_tts is not None:
            self._new_tts[0].close()
            self._new_tts = None

    # --- entry point --------------------------------------------------------------------------

    def handle(self, which: str, request: agent_pb2.ConverseRequest) -> None:
        try:
            if which == "update":
                self._update(request.update)
            elif which == "say":
                self._say(request.say)
            else:
                self._add_message(request.add_message)
        except Refused as r:
            self.s.notice(r.code, r.message, "control", reason=r.reason, field=r.field)

    def after_event(self) -> None:
        """Swap in a new voice, and run queued say/add_message operations, once the agent is free (called
        after every event)."""
        if self._new_tts is not None and self.s.turn is None and not self.s.ended:
            stream, request = self._new_tts
            self._new_tts = None
            self.s.links.replace("tts", stream, request)
            self.s.speech.tts_draining = False  # a new stream: nothing of a cancelled utterance will arrive
        while self._pending and not self.s.ended:
            kind, payload = self._pending[0]
            if self.s.turn is not None or (kind == "say" and self.s.sm.is_(State.USER_SPEAKING)):
                return
            self._pending.popleft()
            if kind == "say":
                self.s.say(*payload)
            else:
                self._apply_message(*payload)

    @property
    def busy(self) -> bool:
        """Operations are queued (the idle timer waits for them too)."""
        return bool(self._pending)

    def _enqueue(self, kind: str, payload: Any, field: str) -> None:
        if len(self._pending) >= MAX_PENDING:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{MAX_PENDING} say/add_message operations already "
                          "wait for the agent's turn in flight: wait for its agent_stopped_speaking", field,
                          Reason.RATE_LIMITED)
        self._pending.append((kind, payload))
        self.after_event()

    # --- say ----------------------------------------------------------------------------------

    def _say(self, say: agent_pb2.SayText) -> None:
        text = say.text.strip()
        self._check_text(text, "say.text", "say text")
        if self.s.closing:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, "the call is ending: nothing more can be said",
                          "say", Reason.INVALID_REQUEST)
        interruptible = say.interruptible if say.HasField("interruptible") else True
        self._enqueue("say", (text, interruptible), "say")

    # --- add_message --------------------------------------------------------------------------

    def _add_message(self, message: agent_pb2.UpdateContext) -> None:
        role = message.role.strip().lower()
        if role not in ROLES:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                          f"role {message.role!r} is unknown: use one of {', '.join(ROLES)}", "add_message.role")
        text = message.text.strip()
        self._check_text(text, "add_message.text", f"{role} message")
        if role == "system":
            budget = self.s.conversation.max_history_tokens
            pinned = estimate_tokens("\n\n".join([*self.pinned, text]))
            if pinned > budget:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                              f"system messages added so far would be about {pinned} tokens, more than this "
                              f"session's context budget of {budget} tokens: send a shorter summary",
                              "add_message.text", Reason.INPUT_TOO_LARGE)
        self._enqueue("add", (role, text), "add_message")

    def _apply_message(self, role: str, text: str) -> None:
        if role == "system":
            self.pinned.append(text)
            self._compose_system_prompt()
        else:
            self.s.add_message(role, text)

    def _compose_system_prompt(self) -> None:
        self.s.conversation.system_prompt = "\n\n".join(p for p in (self.persona, *self.pinned) if p)

    def _check_text(self, text: str, field: str, kind: str) -> None:
        if not text:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{field} is empty: send the text to use", field)
        problem = user_turn_problem(kind, text, self.s.limits.max_user_text_chars,
                                    self.s.conversation.max_history_tokens)
        if problem:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, problem, field, Reason.INPUT_TOO_LARGE)

    # --- update -------------------------------------------------------------------------------

    def _update(self, update: agent_pb2.UpdateSession) -> None:
        new, paths, kept = self._updated_config(update)
        if any(p.split(".")[0] in NEXT_TURN for p in paths) and _tts_changes(self.s.config, new):
            if self._voice_change is not None or self._new_tts is not None:
                raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "a voice change is still being applied: wait for "
                              "its `updated` response", "update", Reason.RATE_LIMITED)
            request = tts_pb2.SynthesizeRequest(config=self._tts_config(new))
            self._voice_change = asyncio.create_task(self._open_voice(update, new, request))
            return  # applied and acknowledged when the new TTS stream is open (voice_ready)
        self._apply(new)
        self._acknowledge(new, paths, kept)

    def _acknowledge(self, new: agent_pb2.SessionConfig, paths: list[str], kept: list[str]) -> None:
        assert self.runtime is not None
        self.s.emit(agent_pb2.ConverseResponse(updated=agent_pb2.UpdateApplied(
            paths=paths, config=effective_config(new, self.s.session_id, self.runtime.settings), kept=kept)))

    def _tts_config(self, new: agent_pb2.SessionConfig) -> tts_pb2.SynthesisConfig:
        cfg = tts_pb2.SynthesisConfig()
        cfg.CopyFrom(self.s.links.tts_config)
        cfg.voice, cfg.speed = new.voice, new.speed
        return cfg

    async def _open_voice(self, update: agent_pb2.UpdateSession, new: agent_pb2.SessionConfig,
                          request: tts_pb2.SynthesizeRequest) -> None:
        """Off the event loop's turn: check the voice with the TTS replicas and open a stream speaking it."""
        result: StageStream | Refused
        try:
            if self.catalog is not None:
                await self.catalog.check(new)
            result = await self.s.links.pool("tts").open("StreamingSynthesize", request)
            if self.s.closed:  # the call ended while the stream was opening
                result.close()
                return
        except ValueError as exc:
            result = Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc), "update.config.voice")
        except BackendError as err:
            code = err.code if err.code != grpc.StatusCode.RESOURCE_EXHAUSTED else grpc.StatusCode.UNAVAILABLE
            field = "update.config.voice" if code == grpc.StatusCode.INVALID_ARGUMENT else "update"
            result = Refused(code, f"the new voice could not be opened on the tts stage: {err.message}", field)
        self.s.post("voice_ready", (update, request, result))

    def _on_voice_ready(self, payload: tuple[agent_pb2.UpdateSession, tts_pb2.SynthesizeRequest,
                                             StageStream | Refused]) -> None:
        update, request, result = payload
        self._voice_change = None
        try:
            if isinstance(result, Refused):
                raise result
            # Built again over the config as it is now: another update may have been applied meanwhile.
            try:
                new, paths, kept = self._updated_config(update)
            except Refused:
                result.close()
                raise
        except Refused as r:
            self.s.notice(r.code, r.message, "control", reason=r.reason, field=r.field)
            return
        self._new_tts = (result, request)  # swapped in by after_event once no turn is in flight
        self._apply(new)
        self._acknowledge(new, paths, kept)

    def _updated_config(self, update: agent_pb2.UpdateSession) -> tuple[agent_pb2.SessionConfig, list[str], list[str]]:
        """The session's config with the update applied, checked; Refused says which field is at fault."""
        if self.runtime is None:  # a session built without the orchestrator (unit tests): nothing to check with
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, "live updates are not available here", "update",
                          Reason.INVALID_REQUEST)
        paths = list(update.update_mask.paths)
        if not paths:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "update_mask is empty: name the fields to change, "
                          f"e.g. system_prompt (updatable: {', '.join(UPDATABLE)})", "update.update_mask")
        for i, path in enumerate(paths):
            where = f"update.update_mask.paths[{i}]"
            top = path.split(".")[0]
            if not field_mask_pb2.FieldMask(paths=[path]).IsValidForDescriptor(agent_pb2.SessionConfig.DESCRIPTOR):
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{path!r} is not a SessionConfig field "
                              f"(updatable: {', '.join(UPDATABLE)})", where)
            if top in FIXED_FOR_CALL:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{top} is fixed for the call on this version (the "
                              "stage stream is configured when the call starts): start a new call to change it",
                              where)
            if top not in UPDATABLE:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{top} cannot change mid-call (updatable: "
                              f"{', '.join(UPDATABLE)})", where)
        new = agent_pb2.SessionConfig()
        new.CopyFrom(self.s.config)
        kept: list[str] = []
        if "profile" in paths:
            kept = self._switch_profile(new, update.config.profile)
        rest = [p for p in paths if p != "profile"]
        if rest:
            field_mask_pb2.FieldMask(paths=rest).MergeMessage(update.config, new, replace_message_field=True,
                                                              replace_repeated_field=True)
        try:
            check_values(new)
            if "tools" in (p.split(".")[0] for p in paths):
                ToolRunner.validate(list(new.tools), self.runtime.knowledge)
        except ValueError as exc:
            field = config_field(exc, agent_pb2.SessionConfig.DESCRIPTOR)
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc),
                          f"update.config.{field}" if field else "update.config") from exc
        return new, paths, kept

    def _switch_profile(self, new: agent_pb2.SessionConfig, name: str) -> list[str]:
        assert self.runtime is not None
        try:
            profile = self.runtime.profiles.get(name)
        except ProfileError as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc), "update.config.profile") from exc
        mode = profile.config.mode or agent_pb2.AGENT_MODE_PIPELINE
        if mode != (new.mode or agent_pb2.AGENT_MODE_PIPELINE):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"profile {name!r} is for {agent_pb2.AgentMode.Name(mode)}"
                          f"; this call runs {agent_pb2.AgentMode.Name(new.mode or agent_pb2.AGENT_MODE_PIPELINE)}: a "
                          "mode cannot change mid-call",
                          "update.config.profile")
        for field in PROFILE_SWITCHED:
            new.ClearField(field)
        field_mask_pb2.FieldMask(paths=list(PROFILE_SWITCHED)).MergeMessage(
            profile.config, new, replace_message_field=True, replace_repeated_field=True)
        new.profile = name
        return [f for f in PROFILE_KEPT if _differs(profile.config, new, f)]

    def _apply(self, new: agent_pb2.SessionConfig) -> None:
        """Make `new` the session's configuration; it applies from the next LLM request and decision."""
        assert self.runtime is not None
        s, old = self.s, self.s.config
        settings = self.runtime.settings
        if new.system_prompt != old.system_prompt or new.HasField("system_prompt") != old.HasField("system_prompt"):
            self.persona = new.system_prompt if new.HasField("system_prompt") else settings.default_system_prompt
            self._compose_system_prompt()
        if list(new.tools) != list(old.tools):
            tools = s.answer.tools
            s.answer.tools = ToolRunner(list(new.tools), tools.knowledge, tools.max_result_chars)
        if new.sampling != old.sampling:
            sampling = audio_pb2.SamplingParams()
            sampling.CopyFrom(new.sampling)
            if not sampling.HasField("max_tokens"):
                sampling.max_tokens = settings.max_tokens
            s.answer.sampling = sampling
        if new.turn_taking != old.turn_taking:
            s.turn_taking.configure(new.turn_taking)
        if new.idle != old.idle:
            s.idle.configure(new.idle)
        s.config = new


def _tts_changes(old: agent_pb2.SessionConfig, new: agent_pb2.SessionConfig) -> bool:
    return (old.voice, old.speed) != (new.voice, new.speed)


def _differs(profile: agent_pb2.SessionConfig, session: agent_pb2.SessionConfig, name: str) -> bool:
    """The profile sets `name` to something other than what the session runs with."""
    field = profile.DESCRIPTOR.fields_by_name[name]
    is_set = profile.HasField(name) if field.has_presence else bool(getattr(profile, name))
    return is_set and getattr(profile, name) != getattr(session, name)
