"""One pipeline conversation: caller audio -> STT -> LLM -> TTS -> caller, overlapped, interruptible.

Everything that happens to a session (a client message, an STT result, an LLM token, a TTS chunk, a
timer, a finished tool) becomes an event in one queue, handled one at a time by `_handle`: the state
machine needs no locks and every decision can be traced to the event that caused it. Backend streams
stay open for the whole session; a turn is a request on them, and barge-in is one `cancel` message to
the LLM and one to TTS, never a torn-down stream.

The session owns the queue, the state machine, the current turn and the conversation, and wires
collaborators with one job each; each names the events it handles (`handlers()`):
- `TurnTaking` (turn_taking.py): caller audio and STT results -> user turns, barge-in, backchannels.
- `Answer` (answer.py): LLM rounds, tool loop, speculation, prewarm.
- `SpeechOut` (speech_out.py): TTS segments, paced playout, first audio, heard text.
- `StageLinks` (stage_links.py): the STT/LLM/TTS streams, their reconnects.
A mode is which collaborators are wired (hybrid mode: an answer that starts from the caller's audio).
Seams for live control: `say` speaks given text as a turn (the greeting uses it) and `add_message`
puts a message into the context without speaking.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc
from voxgrid.orchestrator import telemetry
from voxgrid.orchestrator.answer import Answer
from voxgrid.orchestrator.context import Conversation, Message
from voxgrid.orchestrator.control import LiveControl
from voxgrid.orchestrator.hybrid import HybridAnswer, HybridSpec, HybridTurnTaking
from voxgrid.orchestrator.idle import IdleTimer
from voxgrid.orchestrator.language import TurnLanguage
from voxgrid.orchestrator.limits import InputLimits, SessionRateLimiter, user_turn_problem
from voxgrid.orchestrator.notices import session_notice
from voxgrid.orchestrator.routing import BackendPool
from voxgrid.orchestrator.speech_out import SpeechOut
from voxgrid.orchestrator.stage_links import StageLinks
from voxgrid.orchestrator.state import State, StateMachine, session_state
from voxgrid.orchestrator.tools import ToolRunner
from voxgrid.orchestrator.turn_taking import TurnTaking
from voxgrid.orchestrator.turns import Turn
from voxgrid.orchestrator.usage import UsageMeter

from voxgrid.audio import AudioSpec
from voxgrid.audio_edge import AgentEdge, CallerEdge, echo_canceller, suppressor_for
from voxgrid.errors import Reason
from voxgrid.server.streams import Outbox, StreamError
from voxgrid.v1 import agent_pb2

log = logging.getLogger("voxgrid.orchestrator.session")
LIVE_CONTROL = ("update", "say", "add_message")
Event = tuple[str, Any, float]  # kind, payload, when it was posted (backend messages: their arrival)
TE = agent_pb2.TurnEvent


@dataclass
class Backends:
    stt: BackendPool
    llm: BackendPool
    tts: BackendPool


class PipelineSession:
    """The STT -> LLM -> TTS agent for one caller."""

    def __init__(self, config: agent_pb2.SessionConfig, session_id: str, backends: Backends, tools: ToolRunner,
                 out: Outbox[agent_pb2.ConverseResponse], *, system_prompt: str, max_history_tokens: int,
                 max_tokens: int, playout_lead_ms: int, reconnect_attempts: int, limits: InputLimits,
                 tts_first_chunk_chars: int = 0, speculative_turns: bool = True, first_audio_after_ms: int = 0,
                 first_audio_min_words: int = 3, hybrid: HybridSpec | None = None) -> None:
        self.config = config
        self.session_id = session_id
        self.backends = backends
        self.out = out
        self.in_spec = AudioSpec.from_proto(config.input_format, what="input_format", allow_opus=True)
        self.out_spec = (AudioSpec.from_proto(config.output_format, what="output_format", allow_opus=True)
                         if config.HasField("output_format") else self.in_spec)
        # The audio edge: Opus and noise suppression happen here, so STT and TTS see plain PCM when needed.
        self.caller_edge = CallerEdge(self.in_spec, suppressor_for(config.edge_audio),
                                      echo_canceller(config.edge_audio, self.in_spec, self.out_spec),
                                      deliver=lambda data: self.post("edge_audio", data))  # neural suppressors
        self.agent_edge = AgentEdge(self.out_spec)
        ctx = config.context
        self.conversation = Conversation(config.system_prompt or system_prompt,
                                         ctx.max_history_tokens or max_history_tokens, ctx.summarize_evicted)
        self.limits = limits
        self.rate = SessionRateLimiter(limits)
        self.sm = StateMachine()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cause: tuple[str, float] = ("", 0.0)  # the event being handled and when it was posted
        self.turn: Turn | None = None
        self._turn_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()  # tool runs and reconnects, cancelled on close
        self._closing = False
        self._ended = asyncio.Event()
        self.closed = False
        self.error: StreamError | None = None
        self.usage = UsageMeter("hybrid" if hybrid is not None else "pipeline")
        # The collaborators; the mode is which of them are wired.
        # First audio by time: speech out cuts the first phrase itself (by time, or at tts_first_chunk_chars),
        # so TTS keeps its own, clause-level first chunk for the rest of the answer.
        self.links = StageLinks(self, reconnect_attempts, 0 if first_audio_after_ms else tts_first_chunk_chars)
        self.speech = SpeechOut(self, playout_lead_ms, first_audio_after_ms, first_audio_min_words,
                                tts_first_chunk_chars or 16)
        if hybrid is None:
            self.answer = Answer(self, tools, max_tokens, speculative_turns)
            self.turn_taking = TurnTaking(self, config.turn_taking)
        else:  # hybrid mode: the endpoint hands the caller's audio to a speech-in LLM (orchestrator/hybrid.py)
            self.answer = HybridAnswer(self, tools, max_tokens, speculative_turns)
            self.turn_taking = HybridTurnTaking(self, config.turn_taking, hybrid)
        self.control = LiveControl(self)  # update / say / add_message (orchestrator/control.py)
        self.language = TurnLanguage(self)  # each turn's language and voice (orchestrator/language.py)
        self.idle = IdleTimer(self, config.idle)
        self._handlers = _one_handler_each(
            {"client": self._on_client, "client_end": self._on_client_end, "close_deadline": self._on_close_deadline},
            self.links.handlers(), self.speech.handlers(), self.answer.handlers(), self.turn_taking.handlers(),
            self.control.handlers(), self.idle.handlers(), self.language.handlers())

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the three stage streams at once; any that cannot be had fails the session with its stage."""
        await self.links.open()
        await self.language.open()

    async def close(self) -> None:
        """Idempotent; also safe while `open` is still running (it then closes what it opens)."""
        self.closed = True
        for task in self._tasks:
            task.cancel()
        self.links.close()
        self.control.close()
        self.language.close()
        self.caller_edge.close()  # queued suppression work is dropped, the engine freed
        await self.speech.close()

    async def run(self) -> None:
        """Handle events until the session ends; then the outbox is closed (with an error if one ended it)."""
        self.speech.playout.start()
        try:
            if self.config.greeting:
                self.say(self.config.greeting)
            self.answer.prewarm_context()
            self.idle.after_event()  # a caller who never says anything is idle from the start
            while not self._ended.is_set():
                event = await self.events.get()
                try:
                    self._handle(event)
                    self.control.after_event()
                    self.idle.after_event()
                except StreamError as err:
                    self.error = err
                    self._end()
        finally:
            if self.sm.state is not State.ENDED:
                self.sm.to(State.ENDED, "session over")
            self.emit(self.usage.final_report())  # the session's usage, last before the stream ends
            self.out.close(self.error)

    def post(self, kind: str, payload: Any = None) -> None:
        """Queue an event; the one session task handles it (the only way in from other tasks)."""
        self.events.put_nowait((kind, payload, time.monotonic()))

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run work off the event loop's turn (a tool, a reconnect); it reports back with `post`."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    @property
    def closing(self) -> bool:
        """The caller half-closed, or the agent is ending the call: no new turns start."""
        return self._closing

    def _end(self) -> None:
        self._ended.set()

    def end_after(self, goodbye: str) -> None:
        """End the call from the agent's side (idle time-out): say `goodbye` first, if any, then end."""
        if not goodbye:
            self._end()
            return
        self.say(goodbye, interruptible=False)
        self._on_client_end(None)  # the same path as a caller's half-close: finish speaking, then end

    def next_turn_id(self) -> int:
        return next(self._turn_ids)

    # --- output helpers -------------------------------------------------------------------------

    def emit(self, response: agent_pb2.ConverseResponse) -> None:
        if response.HasField("agent_audio"):
            self.usage.agent_audio(response.agent_audio.turn_id, self.agent_edge.message_ms(response.agent_audio.data))
        else:
            telemetry.hop(*self.cause, response)
        self.out.put(response)

    def event(self, kind: int, turn_id: int = 0, **kw: Any) -> None:
        self.emit(agent_pb2.ConverseResponse(turn_event=TE(
            kind=kind, turn_id=turn_id, audio_offset_ms=int(self.turn_taking.audio_ms), state=self.sm.state.value,
            session_state=session_state(self.sm.state), **kw)))

    def notice(self, code: grpc.StatusCode, message: str, stage: str, *, reason: Reason | None = None,
               field: str | None = None) -> None:
        """A problem that does not end the call: google.rpc.Status + typed stage (orchestrator/notices.py)."""
        log.warning("%s: %s", stage, message)
        self.emit(agent_pb2.ConverseResponse(notice=session_notice(code, message, stage, reason=reason, field=field)))

    def later(self, delay_s: float, kind: str, payload: Any = None) -> None:
        asyncio.get_running_loop().call_later(delay_s, self.post, kind, payload)

    # --- event dispatch -------------------------------------------------------------------------

    def _handle(self, event: Event) -> None:
        kind, payload, posted_at = event
        handler = self._handlers.get(kind)
        if handler is None:
            raise RuntimeError(f"no handler for event {kind}")
        self.cause = (kind, posted_at)  # what the client messages emitted now answer (telemetry.hop)
        try:
            handler(payload)
        finally:
            self.cause = ("", 0.0)

    def _on_client(self, request: agent_pb2.ConverseRequest) -> None:
        which = request.WhichOneof("request")
        if which in ("text", "control", *LIVE_CONTROL) and not self._admit(request, which):
            return
        if which == "audio":
            if not self._closing:  # the agent is ending the call: nothing more is heard
                self.turn_taking.caller_audio(request.audio)
        elif which in LIVE_CONTROL:
            self.control.handle(which, request)
        elif which == "text":
            self.turn_taking.typed_text(request.text)
        elif which == "control":
            if request.control.action == agent_pb2.AgentControl.ACTION_INTERRUPT:
                self.interrupt("client asked", reaction_from=time.monotonic())
                if self.sm.is_(State.INTERRUPTED):
                    self.sm.to(State.LISTENING, "interrupted by the client")
            elif request.control.action == agent_pb2.AgentControl.ACTION_END:
                self._end()
            else:
                raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, "control.action must be INTERRUPT or END")
        elif which == "playback":
            self.usage.played(request.playback.turn_id, float(request.playback.played_ms))
            self.speech.client_played(request.playback.turn_id, float(request.playback.played_ms))
        elif which == "config":
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, "config may only be sent once, as the first message")
        else:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT,
                              "empty message: send audio, text, control, playback, update, say or add_message")

    def _admit(self, request: agent_pb2.ConverseRequest, which: str) -> bool:
        """Size, then rate: an oversize or flooding message is refused in-band and the call goes on."""
        if which == "control" and request.control.action == agent_pb2.AgentControl.ACTION_END:
            return True  # ending is never refused
        if which == "text" and self.refused("typed turn", request.text.strip(), self.limits.max_user_text_chars):
            return False
        chars = {"text": len(request.text), "say": len(request.say.text),
                 "add_message": len(request.add_message.text)}.get(which, 0)
        refusal = self.rate.refuse(which, min(chars, self.limits.max_user_text_chars))
        if refusal:
            live = which in LIVE_CONTROL
            self.notice(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal, "control" if live else "input",
                        field=which if live else None)
        return not refusal

    def refused(self, kind: str, text: str, max_chars: int) -> bool:
        """An oversize user turn never reaches the LLM: say why (in-band) and go on listening."""
        problem = user_turn_problem(kind, text, max_chars, self.conversation.max_history_tokens)
        if problem:
            self.notice(grpc.StatusCode.INVALID_ARGUMENT, problem, "input")
        return bool(problem)

    def _on_client_end(self, _: Any) -> None:
        """The caller half-closed: finish the utterance and the answer in flight, then end."""
        if self.caller_edge.finish(lambda: self.post("client_end")):
            return  # the suppression worker's tail reaches STT first; this event comes back after it
        self._closing = True
        self.turn_taking.end_of_input()
        self.later(60.0, "close_deadline")
        self.maybe_finish()

    def _on_close_deadline(self, _: Any) -> None:
        self._end()

    def maybe_finish(self) -> None:
        """After the caller's end: the session ends once nothing is said, heard or answered any more."""
        if (self._closing and self.turn is None and not self.sm.is_(State.USER_SPEAKING)
                and not self.links.reading("stt")):
            self._end()

    # --- the turn's end: finished, interrupted ----------------------------------------------------

    def finish_turn(self, turn: Turn, heard: str) -> None:
        """The turn's speech was played (or there was none): what was heard joins the history."""
        if heard[turn.history_chars:].strip():
            self.conversation.add(Message("assistant", heard[turn.history_chars:].strip()))
        self.turn = None
        self.text_final(turn)
        if turn.first_audio_at:
            self.event(TE.KIND_AGENT_STOPPED_SPEAKING, turn.turn_id)
        if self.sm.is_(State.THINKING, State.AGENT_SPEAKING, State.CALLING_TOOL):
            self.sm.to(State.LISTENING, "turn complete")
        self.emit(self.usage.turn_report(turn.turn_id))
        self.maybe_finish()

    def text_final(self, turn: Turn) -> None:
        """The turn's text is complete (played out or cut off): one AgentText with is_final and all of it."""
        if turn.text:
            self.emit(agent_pb2.ConverseResponse(agent_text=agent_pb2.AgentText(
                turn_id=turn.turn_id, is_final=True, full_text=turn.text)))

    def interrupt(self, reason: str, reaction_from: float) -> None:
        """Barge-in: cancel the answer and its speech at once; only what was heard stays in the history."""
        turn = self.turn
        if turn is None:
            return
        if turn.speculative:
            self.answer.void_speculation(turn)
            return
        self.answer.cancel(turn)
        if not self.speech.paused:  # not already stopped at speech start (typed input, client control)
            telemetry.BARGE_IN.observe(max(0.0, time.monotonic() - reaction_from))
        heard = self.speech.stop(turn)
        self.text_final(turn)
        if turn.first_audio_at:
            telemetry.INTERRUPTIONS.inc()
            self.sm.to(State.INTERRUPTED, reason)
            self.event(TE.KIND_INTERRUPTED, turn.turn_id, heard_text=heard)
            self.turn = None
            if heard[turn.history_chars:].strip():
                self.conversation.add(Message("assistant", heard[turn.history_chars:].strip() + " —"))
        else:
            # Nothing was heard yet: the caller just kept talking. Their words join the same user turn.
            self.turn = None
            self.sm.to(State.LISTENING if self.sm.is_(State.THINKING, State.CALLING_TOOL) else self.sm.state,
                       reason)
        self.emit(self.usage.turn_report(turn.turn_id))
        log.info("turn %d interrupted (%s); heard %d of %d chars", turn.turn_id, reason, len(heard), len(turn.text))

    # --- seams for live control ---------------------------------------------------------------------

    def say(self, text: str, interruptible: bool = True) -> None:
        """Speak `text` as an agent turn of its own, without the LLM (the greeting, live control's `say`, an
        idle reprompt); `interruptible=False`: caller speech does not cut it."""
        now = time.monotonic()
        turn = Turn(self.next_turn_id(), "", now, now, now, interruptible=interruptible)
        turn.llm_done = True
        self.turn = turn
        self.speech.say(turn, text)
        self.sm.to(State.THINKING, "agent says a given text")

    def add_message(self, role: str, text: str) -> None:
        """Add context without speaking (live control's `add_message`); the next answer sees it."""
        self.conversation.add(Message(role, text, added=True))


def _one_handler_each(*tables: dict[str, Callable[[Any], None]]) -> dict[str, Callable[[Any], None]]:
    """Merge the collaborators' event tables; an event claimed twice is a wiring bug, caught at once."""
    merged: dict[str, Callable[[Any], None]] = {}
    for table in tables:
        for kind, handler in table.items():
            if kind in merged:
                raise RuntimeError(f"event {kind!r} has two handlers: {merged[kind]} and {handler}")
            merged[kind] = handler
    return merged
