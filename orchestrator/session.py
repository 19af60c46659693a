"""One pipeline conversation: caller audio -> STT -> LLM -> TTS -> caller, overlapped, interruptible.

Everything that happens to a session (a client message, an STT result, an LLM token, a TTS chunk, a
timer, a finished tool) becomes an event in one queue, handled one at a time by `_handle`: the state
machine needs no locks and every decision can be traced to the event that caused it. Backend streams
stay open for the whole session; a turn is a request on them, and barge-in is one `cancel` message to
the LLM and one to TTS, never a torn-down stream.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from voxgrid.orchestrator import telemetry
from voxgrid.orchestrator.context import Conversation, Message
from voxgrid.orchestrator.limits import InputLimits, SessionRateLimiter, user_turn_problem
from voxgrid.orchestrator.playout import Chunk, Playout
from voxgrid.orchestrator.routing import BackendError, BackendPool, StageStream
from voxgrid.orchestrator.state import State, StateMachine
from voxgrid.orchestrator.tools import ToolResult, ToolRunner

from voxgrid.audio import AudioSpec
from voxgrid.server.streams import Outbox, StreamError
from voxgrid.v1 import agent_pb2, audio_pb2, llm_pb2, stt_pb2, tts_pb2

log = logging.getLogger("voxgrid.orchestrator.session")
Event = tuple[str, Any]
TE = agent_pb2.TurnEvent
MAX_TOOL_ROUNDS = 3  # generate requests of one turn that may call tools
FORCE_ANSWER = ("Answer me now from the tool results above, in one or two short spoken sentences. "
                "Do not call a tool again.")
TOOL_LOOP_APOLOGY = "Sorry, I could not work that out."
# Backchannels never interrupt, whatever their length.
BACKCHANNELS = frozenset({"uh-huh", "uh huh", "mhm", "mm-hmm", "mm hmm", "hmm", "yeah", "yes", "yep", "okay", "ok",
                          "right", "sure", "i see", "got it", "uh", "um", "ah", "oh"})


def _words(text: str) -> list[str]:
    return [w for w in text.replace(",", " ").replace(".", " ").split() if w]


def _is_backchannel(text: str) -> bool:
    return text.strip().lower().strip(".,!?") in BACKCHANNELS


@dataclass
class Segment:
    """One TTS utterance of a turn: an answer round's text (base into the turn text) or a filler.

    The TTS server numbers utterances; a segment learns its number from the first audio or done that
    arrives for it (the stream is ordered, so the oldest segment without a number is the one speaking).
    """

    base_chars: int  # -1 for filler
    utterance_id: int = 0
    flushed: bool = False
    done: bool = False


@dataclass
class Turn:
    turn_id: int
    user_text: str
    speech_end_at: float  # arrival of the caller's last speech audio (or of the typed text)
    endpoint_at: float
    final_at: float
    request_id: str = ""
    rounds: int = 0
    text: str = ""  # everything the agent said for history (fillers excluded)
    history_chars: int = 0  # how much of `text` is already in the history (before tool calls)
    generate_sent_at: float = 0.0
    first_token_at: float = 0.0
    first_tts_text_at: float = 0.0
    first_audio_at: float = 0.0
    tool_s: float = 0.0
    llm_done: bool = False
    segments: list[Segment] = field(default_factory=list)
    tool_calls: list[audio_pb2.ToolCall] = field(default_factory=list)
    seen_calls: set[tuple[str, str]] = field(default_factory=set)  # (name, arguments) already run this turn
    forced: bool = False  # the current request asks for an answer without more tool calls
    round_start: int = 0  # where the current request's text starts in `text`
    held_text: str = ""  # text held back while it looks like JSON or code
    cancelled: bool = False
    speculative: bool = False  # prepared from STT's preview; its audio waits for the endpoint
    utterance_id: int = 0  # the caller utterance it answers
    history_snapshot: tuple[int, str | None] = (0, None)  # to undo a voided speculative turn
    held_done: llm_pb2.GenerationDone | None = None  # tool calls wait for the endpoint

    @property
    def answer_segment(self) -> Segment | None:
        for seg in reversed(self.segments):
            if seg.base_chars >= 0 and not seg.flushed:
                return seg
        return None


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
                 tts_first_chunk_chars: int = 0, speculative_turns: bool = True) -> None:
        self.config = config
        self.session_id = session_id
        self.backends = backends
        self.tools = tools
        self.out = out
        self.in_spec = AudioSpec.from_proto(config.input_format, what="input_format")
        self.out_spec = (AudioSpec.from_proto(config.output_format, what="output_format")
                         if config.HasField("output_format") else self.in_spec)
        ctx = config.context
        self.conversation = Conversation(config.system_prompt or system_prompt,
                                         ctx.max_history_tokens or max_history_tokens, ctx.summarize_evicted)
        self.sampling = audio_pb2.SamplingParams()
        self.sampling.CopyFrom(config.sampling)
        if not self.sampling.HasField("max_tokens"):
            self.sampling.max_tokens = max_tokens
        tt = config.turn_taking
        self.min_interruption_words = tt.min_interruption_words or 2
        self.min_interruption_s = (tt.min_interruption_ms or 400) / 1000
        self.allow_interruptions = tt.allow_interruptions if tt.HasField("allow_interruptions") else True
        self.reconnect_attempts = reconnect_attempts
        self.limits = limits
        self.rate = SessionRateLimiter(limits)
        self.tts_first_chunk_chars = tts_first_chunk_chars
        self.speculative_turns = speculative_turns
        self.sm = StateMachine()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.streams: dict[str, StageStream] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._reconnects: dict[str, int] = {"stt": 0, "llm": 0, "tts": 0}
        self.playout = Playout(self._emit, playout_lead_ms, self._on_first_audio, self._on_sent_all)
        self._turn_ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self.turn: Turn | None = None
        # After a cancel, TTS audio still in transit belongs to the cancelled utterances: it is dropped
        # until the server confirms the cancel with a `done` (cancelled).
        self.tts_draining = False
        # caller audio bookkeeping: offsets (ms, on the STT stream's clock) and when they arrived
        self.audio_ms = 0.0
        self.stt_offset_base_ms = 0.0
        self._arrivals: deque[tuple[float, float]] = deque(maxlen=4096)
        # current caller utterance, as STT reports it
        self.utterance_id = 0
        self.utterance_started_at = 0.0
        self.utterance_text = ""
        self.speech_end_at = 0.0
        self.endpoint_at = 0.0
        self._barge_pending: int | None = None  # utterance that may become an interruption
        self._backchannel_utterances: set[int] = set()
        self._prewarmed_text = ""
        self._prewarm_in_flight = False
        self._tool_tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._ended = asyncio.Event()
        self.closed = False
        self.error: StreamError | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the three stage streams at once; any that cannot be had fails the session with its stage."""
        c = self.config
        stt_cfg = stt_pb2.RecognitionConfig(format=c.input_format, language=c.language, session_id=self.session_id,
                                            interim_results=True, endpointing=c.endpointing)
        tts_cfg = tts_pb2.SynthesisConfig(voice=c.voice, output_format=self.out_spec.to_proto(),
                                          session_id=self.session_id, language=c.language,
                                          first_chunk_max_chars=self.tts_first_chunk_chars)
        llm_cfg = llm_pb2.ChatConfig(session_id=self.session_id, adapter=c.adapter)
        opening = [
            asyncio.ensure_future(self.backends.stt.open("StreamingRecognize",
                                                         stt_pb2.RecognizeRequest(config=stt_cfg))),
            asyncio.ensure_future(self.backends.llm.open("Chat", llm_pb2.ChatRequest(config=llm_cfg))),
            asyncio.ensure_future(self.backends.tts.open("StreamingSynthesize",
                                                         tts_pb2.SynthesizeRequest(config=tts_cfg))),
        ]
        try:
            opened = await asyncio.gather(*opening, return_exceptions=True)
        except asyncio.CancelledError:  # the client left while the stages were opening: close what opened
            for task in opening:
                if task.done() and not task.cancelled() and task.exception() is None:
                    task.result().close()
            raise
        failures = [r for r in opened if isinstance(r, BaseException)]
        if self.closed:  # the caller's RPC ended while the stages were opening
            for result in opened:
                if isinstance(result, StageStream):
                    result.close()
            raise asyncio.CancelledError
        for stage, result in zip(("stt", "llm", "tts"), opened, strict=True):
            if isinstance(result, StageStream):
                self._attach(stage, result)
        if failures:
            await self.close()
            raise failures[0]
        self._stt_config = stt_cfg
        self._llm_config = llm_cfg
        self._tts_config = tts_cfg

    def _attach(self, stage: str, stream: StageStream) -> None:
        self.streams[stage] = stream

        async def read() -> None:
            try:
                async for response in stream.responses():
                    self.events.put_nowait((stage, response))
                self.events.put_nowait((f"{stage}_end", stream))
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as err:
                self.events.put_nowait((f"{stage}_lost", (stream, err)))

        self._readers[stage] = asyncio.create_task(read())

    async def close(self) -> None:
        """Idempotent; also safe while `open` is still running (it then closes what it opens)."""
        self.closed = True
        for task in [*self._readers.values(), *self._tool_tasks]:
            task.cancel()
        for stream in self.streams.values():
            stream.close()
        await self.playout.close()

    async def run(self) -> None:
        """Handle events until the session ends; then the outbox is closed (with an error if one ended it)."""
        self.playout.start()
        try:
            if self.config.greeting:
                self._greet(self.config.greeting)
            while not self._ended.is_set():
                event = await self.events.get()
                try:
                    self._handle(event)
                except StreamError as err:
                    self.error = err
                    self._end()
        finally:
            if self.sm.state is not State.ENDED:
                self.sm.to(State.ENDED, "session over")
            self.out.close(self.error)

    def post(self, kind: str, payload: Any = None) -> None:
        self.events.put_nowait((kind, payload))

    def _end(self) -> None:
        self._ended.set()

    # --- output helpers -------------------------------------------------------------------------

    def _emit(self, response: agent_pb2.ConverseResponse) -> None:
        self.out.put(response)

    def _event(self, kind: int, turn_id: int = 0, **kw: Any) -> None:
        self._emit(agent_pb2.ConverseResponse(turn_event=TE(
            kind=kind, turn_id=turn_id, audio_offset_ms=int(self.audio_ms), state=self.sm.state.value, **kw)))

    def _notice(self, code: grpc.StatusCode, message: str, stage: str) -> None:
        log.warning("%s: %s", stage, message)
        self._emit(agent_pb2.ConverseResponse(notice=agent_pb2.SessionNotice(
            code=code.value[0], message=message, stage=stage)))

    def _later(self, delay_s: float, kind: str, payload: Any = None) -> None:
        asyncio.get_running_loop().call_later(delay_s, self.post, kind, payload)

    # --- event dispatch -------------------------------------------------------------------------

    def _handle(self, event: Event) -> None:
        kind, payload = event
        handler: Callable[[Any], None] | None = getattr(self, f"_on_{kind}", None)
        if handler is None:
            raise RuntimeError(f"no handler for event {kind}")
        handler(payload)

    # client

    def _on_client(self, request: agent_pb2.ConverseRequest) -> None:
        which = request.WhichOneof("request")
        if which in ("text", "control") and not self._admit(request, which):
            return
        if which == "audio":
            self._on_caller_audio(request.audio)
        elif which == "text":
            self._on_typed_text(request.text)
        elif which == "control":
            if request.control.action == agent_pb2.AgentControl.ACTION_INTERRUPT:
                self._interrupt("client asked", reaction_from=time.monotonic())
                if self.sm.is_(State.INTERRUPTED):
                    self.sm.to(State.LISTENING, "interrupted by the client")
            elif request.control.action == agent_pb2.AgentControl.ACTION_END:
                self._end()
            else:
                raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, "control.action must be INTERRUPT or END")
        elif which == "playback":
            if self.turn and request.playback.turn_id == self.turn.turn_id:
                self.playout.client_played_ms = float(request.playback.played_ms)
        elif which == "config":
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, "config may only be sent once, as the first message")
        else:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, "empty message: send audio, text, control or playback")

    def _admit(self, request: agent_pb2.ConverseRequest, which: str) -> bool:
        """Size, then rate: an oversize or flooding message is refused in-band and the call goes on."""
        if which == "control" and request.control.action == agent_pb2.AgentControl.ACTION_END:
            return True  # ending is never refused
        if which == "text" and self._refused("typed turn", request.text.strip(), self.limits.max_user_text_chars):
            return False
        refusal = self.rate.refuse(which, len(request.text) if which == "text" else 0)
        if refusal:
            self._notice(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal, "input")
        return not refusal

    def _refused(self, kind: str, text: str, max_chars: int) -> bool:
        """An oversize user turn never reaches the LLM: say why (in-band) and go on listening."""
        problem = user_turn_problem(kind, text, max_chars, self.conversation.max_history_tokens)
        if problem:
            self._notice(grpc.StatusCode.INVALID_ARGUMENT, problem, "input")
        return bool(problem)

    def _on_caller_audio(self, data: bytes) -> None:
        if len(data) % self.in_spec.bytes_per_sample:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"audio of {len(data)} bytes is not a whole number of {self.in_spec} samples: "
                              "send whole samples in every message")
        self.audio_ms += self.in_spec.duration_ms(len(data))
        self._arrivals.append((self.audio_ms - self.stt_offset_base_ms, time.monotonic()))
        self.streams["stt"].send(stt_pb2.RecognizeRequest(audio=data))

    def _on_client_end(self, _: Any) -> None:
        """The caller half-closed: finish the utterance and the answer in flight, then end."""
        self._closing = True
        self.streams["stt"].send(stt_pb2.RecognizeRequest(control=stt_pb2.SttControl(
            action=stt_pb2.SttControl.ACTION_END)))
        self._later(60.0, "close_deadline")
        self._maybe_finish()

    def _on_close_deadline(self, _: Any) -> None:
        self._end()

    def _maybe_finish(self) -> None:
        if self._closing and self.turn is None and not self.sm.is_(State.USER_SPEAKING) and "stt" not in self._readers:
            self._end()

    def _on_typed_text(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        now = time.monotonic()
        if self.turn is not None:
            self._interrupt("typed input", reaction_from=now)
        self._start_turn(text, speech_end_at=now, endpoint_at=now, final_at=now)

    # STT

    def _arrival_of(self, stt_offset_ms: float) -> float:
        for offset, at in self._arrivals:
            if offset >= stt_offset_ms:
                return at
        return time.monotonic()

    def _on_stt(self, response: stt_pb2.RecognizeResponse) -> None:
        which = response.WhichOneof("result")
        if which == "speech_event":
            ev = response.speech_event
            if ev.kind == stt_pb2.SpeechEvent.KIND_SPEECH_STARTED:
                self._on_speech_started(ev)
            elif ev.kind == stt_pb2.SpeechEvent.KIND_SPEECH_ENDED:
                self._on_speech_ended(ev)
            elif ev.kind == stt_pb2.SpeechEvent.KIND_SPEECH_RESUMED:
                self._on_speech_resumed(ev)
        elif which == "transcript":
            tr = response.transcript
            self._emit(agent_pb2.ConverseResponse(user_transcript=tr))
            if tr.is_final:
                self._on_final(tr)
            else:
                self._on_partial(tr)

    def _on_speech_started(self, ev: stt_pb2.SpeechEvent) -> None:
        self.utterance_id = ev.utterance_id
        self.utterance_started_at = self._arrival_of(ev.audio_offset_ms)
        self.utterance_text = ""
        if self.turn is not None:
            # The agent is busy: this may be an interruption, a backchannel or noise. Decide on evidence.
            if self.allow_interruptions:
                self._barge_pending = ev.utterance_id
                self._later(self.min_interruption_s, "barge_check", ev.utterance_id)
                if not self.turn.speculative:
                    # Stop sending at once; the client's short buffer keeps playing. A backchannel resumes.
                    self.playout.pause()
                    telemetry.BARGE_IN.observe(max(0.0, time.monotonic() - self.utterance_started_at))
            else:
                self._backchannel_utterances.add(ev.utterance_id)
            return
        self.sm.to(State.USER_SPEAKING, "speech started")
        self._event(TE.KIND_USER_STARTED_SPEAKING)

    def _on_barge_check(self, utterance_id: int) -> None:
        if self._barge_pending == utterance_id and not _is_backchannel(self.utterance_text):
            self._confirm_barge_in()

    def _on_partial(self, tr: stt_pb2.Transcript) -> None:
        if tr.utterance_id != self.utterance_id:
            return
        if tr.speculative:
            self._on_preview(tr)
            return
        self.utterance_text = tr.text
        if self._barge_pending == tr.utterance_id:
            if len(_words(tr.text)) >= self.min_interruption_words and not _is_backchannel(tr.text):
                self._confirm_barge_in()
            return
        if (self.turn is None and tr.committed_text and tr.committed_text != self._prewarmed_text
                and len(tr.committed_text) <= self.limits.max_transcript_chars):
            self._prewarm(tr.committed_text)

    def _on_preview(self, tr: stt_pb2.Transcript) -> None:
        """The caller fell silent and STT previews the final: prepare the answer, hold its audio."""
        if (not self.speculative_turns or self.turn is not None or self._barge_pending == tr.utterance_id
                or tr.utterance_id in self._backchannel_utterances or not tr.text.strip()
                or len(tr.text) > self.limits.max_transcript_chars):
            return
        self._start_turn(tr.text.strip(), speech_end_at=0.0, endpoint_at=0.0, final_at=0.0,
                         speculative_utterance=tr.utterance_id)

    def _on_speech_resumed(self, ev: stt_pb2.SpeechEvent) -> None:
        turn = self.turn
        if turn is not None and turn.speculative and turn.utterance_id == ev.utterance_id:
            self._void_speculation(turn)

    def _void_speculation(self, turn: Turn) -> None:
        """The caller went on talking: drop the prepared answer without a trace."""
        turn.cancelled = True
        self.streams["llm"].send(llm_pb2.ChatRequest(cancel=llm_pb2.CancelRequest(request_id=turn.request_id)))
        if any(not s.done for s in turn.segments):
            self.tts_draining = True
            self.streams["tts"].send(tts_pb2.SynthesizeRequest(control=tts_pb2.TtsControl(
                action=tts_pb2.TtsControl.ACTION_CANCEL)))
        self.playout.clear()
        length, last_user = turn.history_snapshot
        del self.conversation.history[length:]
        if last_user is not None and self.conversation.history:
            self.conversation.history[-1].content = last_user
        self.turn = None
        telemetry.SPECULATIONS.labels("voided").inc()

    def _confirm_speculation(self, turn: Turn, speech_end_at: float, endpoint_at: float, final_at: float) -> None:
        turn.speculative = False
        turn.speech_end_at, turn.endpoint_at, turn.final_at = speech_end_at, endpoint_at, final_at
        self.sm.to(State.THINKING, "caller finished (answer prepared)")
        self.playout.release()
        telemetry.SPECULATIONS.labels("confirmed").inc()
        if turn.held_done is not None:
            done, turn.held_done = turn.held_done, None
            self._on_generation_done(turn, done)
        else:
            self._maybe_turn_complete(turn)

    def _confirm_barge_in(self) -> None:
        self._barge_pending = None
        self._interrupt("caller spoke over the agent", reaction_from=self.utterance_started_at)
        self.sm.to(State.USER_SPEAKING, "caller speaking")
        self._event(TE.KIND_USER_STARTED_SPEAKING)

    def _on_speech_ended(self, ev: stt_pb2.SpeechEvent) -> None:
        if ev.utterance_id != self.utterance_id:
            return
        self.endpoint_at = time.monotonic()
        self.speech_end_at = self._arrival_of(ev.audio_offset_ms)
        if self._barge_pending == ev.utterance_id:
            # Too short to be an interruption: a backchannel or a noise while the agent talks.
            self._barge_pending = None
            self._backchannel_utterances.add(ev.utterance_id)
            self.playout.resume()
            return
        if ev.utterance_id in self._backchannel_utterances:
            return
        self._event(TE.KIND_USER_STOPPED_SPEAKING)

    def _on_final(self, tr: stt_pb2.Transcript) -> None:
        if tr.utterance_id in self._backchannel_utterances:
            self._backchannel_utterances.discard(tr.utterance_id)
            return
        if self._barge_pending == tr.utterance_id:  # final before the check fired: decide on its words now
            self._barge_pending = None
            if len(_words(tr.text)) < self.min_interruption_words or _is_backchannel(tr.text):
                self.playout.resume()
                return
            self._interrupt("caller spoke over the agent", reaction_from=self.utterance_started_at)
        text = tr.text.strip()
        now = time.monotonic()
        endpoint_at = self.endpoint_at if self.endpoint_at and self.endpoint_at <= now else now
        speech_end_at = self.speech_end_at if self.speech_end_at else endpoint_at
        self.endpoint_at = self.speech_end_at = 0.0
        turn = self.turn
        if turn is not None and turn.speculative and turn.utterance_id == tr.utterance_id:
            if text == turn.user_text:
                self._confirm_speculation(turn, speech_end_at, endpoint_at, now)
                return
            self._void_speculation(turn)
        if text and self._refused("transcript", text, self.limits.max_transcript_chars):
            text = ""
        if not text:
            if self.sm.is_(State.USER_SPEAKING):
                self.sm.to(State.LISTENING, "no words")
            self._maybe_finish()
            return
        self._start_turn(text, speech_end_at=speech_end_at, endpoint_at=endpoint_at, final_at=now)

    def _on_stt_end(self, stream: StageStream) -> None:
        if stream is self.streams.get("stt"):
            self._readers.pop("stt", None)
            self._maybe_finish()

    # LLM

    def _prewarm(self, partial: str) -> None:
        if self._prewarm_in_flight:
            return
        self._prewarm_in_flight = True
        self._prewarmed_text = partial
        self.streams["llm"].send(llm_pb2.ChatRequest(prewarm=llm_pb2.PrewarmRequest(
            messages=self.conversation.messages(pending_user=partial), tools=self.tools.schemas())))

    def _start_turn(self, user_text: str, *, speech_end_at: float, endpoint_at: float, final_at: float,
                    speculative_utterance: int = 0) -> None:
        history = self.conversation.history
        snapshot = (len(history), history[-1].content if history else None)
        if not (self._last_turn_unanswered() and self._fits_merged(user_text)
                and self.conversation.append_to_last_user(user_text)):
            self.conversation.add(Message("user", user_text))
        self._prewarmed_text = ""
        turn = Turn(next(self._turn_ids), user_text, speech_end_at, endpoint_at, final_at,
                    speculative=bool(speculative_utterance), utterance_id=speculative_utterance,
                    history_snapshot=snapshot)
        self.turn = turn
        self.playout.start_turn(turn.turn_id, held=turn.speculative)
        if not turn.speculative:
            self.sm.to(State.THINKING, "caller finished")
        self._generate(turn)

    def _fits_merged(self, user_text: str) -> bool:
        """Unanswered turns merge into one user message only while it stays within the turn limits, so
        a caller who keeps talking over an unfinished answer cannot grow one message without bound."""
        merged = f"{self.conversation.history[-1].content} {user_text}"
        max_chars = min(self.limits.max_user_text_chars, self.limits.max_transcript_chars)
        return not user_turn_problem("turn", merged, max_chars, self.conversation.max_history_tokens)

    def _last_turn_unanswered(self) -> bool:
        """The previous user message got no answer (its turn was cancelled before any audio)."""
        h = self.conversation.history
        return bool(h) and h[-1].role == "user"

    def _generate(self, turn: Turn, force_answer: bool = False) -> None:
        turn.rounds += 1
        turn.forced = force_answer
        turn.round_start = len(turn.text)
        turn.held_text = ""
        turn.request_id = f"{turn.turn_id}.{turn.rounds}.{next(self._request_ids)}"
        turn.llm_done = False
        turn.tool_calls = []
        turn.generate_sent_at = time.monotonic()
        self.streams["llm"].send(llm_pb2.ChatRequest(generate=llm_pb2.GenerateRequest(
            request_id=turn.request_id, messages=self._messages(force_answer), sampling=self.sampling,
            tools=[] if force_answer else self.tools.schemas())))

    def _messages(self, force_answer: bool) -> list[llm_pb2.ChatMessage]:
        messages = self.conversation.messages()
        if force_answer:  # a transient nudge, never kept in the history
            messages.append(llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=FORCE_ANSWER))
        return messages

    def _on_llm(self, response: llm_pb2.ChatResponse) -> None:
        which = response.WhichOneof("event")
        if which == "prewarmed":
            self._prewarm_in_flight = False
            return
        turn = self.turn
        if turn is None or response.request_id != turn.request_id or turn.cancelled:
            if which == "error" and not response.request_id:
                self._prewarm_in_flight = False
            return  # a cancelled request's tail
        if which == "delta":
            self._on_token(turn, response.delta.text)
        elif which == "tool_call":
            turn.tool_calls.append(response.tool_call)
        elif which == "done":
            self._on_generation_done(turn, response.done)
        elif which == "error":
            self._notice(grpc.StatusCode(_code(response.error.code)), response.error.message, "llm")

    def _on_token(self, turn: Turn, text: str) -> None:
        if not text:
            return
        if turn.held_text or not turn.text[turn.round_start:].strip():
            # A voice agent never reads out JSON or code (a small model's garbled tool call): a round
            # that opens with `{` or a fence is held back; at its end it is dropped (_on_generation_done).
            held = turn.held_text + text
            if not held.strip() or held.lstrip()[0] in "{`":
                turn.held_text = held
                return
            turn.held_text = ""
            text = held
        now = time.monotonic()
        if not turn.first_token_at:
            turn.first_token_at = now
        seg = turn.answer_segment
        if seg is None:
            seg = Segment(len(turn.text))
            turn.segments.append(seg)
        if not turn.first_tts_text_at:
            turn.first_tts_text_at = now
        turn.text += text
        self._emit(agent_pb2.ConverseResponse(agent_text=agent_pb2.AgentText(turn_id=turn.turn_id, text=text)))
        self.streams["tts"].send(tts_pb2.SynthesizeRequest(text=text))

    def _flush_tts(self, turn: Turn) -> None:
        seg = turn.answer_segment
        if seg is not None:
            seg.flushed = True
            self.streams["tts"].send(tts_pb2.SynthesizeRequest(control=tts_pb2.TtsControl(
                action=tts_pb2.TtsControl.ACTION_FLUSH)))

    def _on_generation_done(self, turn: Turn, done: llm_pb2.GenerationDone) -> None:
        if turn.speculative and done.finish_reason == llm_pb2.FINISH_REASON_TOOL_CALLS:
            turn.held_done = done  # no tool side effects before the caller has really finished
            return
        self._flush_tts(turn)
        if done.finish_reason == llm_pb2.FINISH_REASON_TOOL_CALLS and turn.tool_calls:
            fresh = [c for c in turn.tool_calls if (c.name, c.arguments_json) not in turn.seen_calls]
            if turn.forced:  # asked to answer and called a tool anyway: say so rather than loop
                self._on_token(turn, (" " if turn.text else "") + TOOL_LOOP_APOLOGY)
                self._flush_tts(turn)
                turn.llm_done = True
                self._maybe_turn_complete(turn)
                return
            if not fresh or turn.rounds >= MAX_TOOL_ROUNDS:
                # Small models can loop on a tool; the results are in the context: make it answer.
                self._generate(turn, force_answer=True)
                return
            turn.tool_calls = fresh
            turn.seen_calls.update((c.name, c.arguments_json) for c in fresh)
            self.conversation.add(Message("assistant", turn.text[turn.history_chars:].strip(),
                                          tool_calls=list(turn.tool_calls)))
            turn.history_chars = len(turn.text)
            self._run_tools(turn)
            return
        turn.llm_done = True
        if turn.held_text:
            log.info("dropped unspeakable model output: %.80r", turn.held_text)
            turn.held_text = ""
        if turn.rounds > 1 and not turn.text[turn.history_chars:].strip():
            # Tools ran but the model gave no speakable answer: the caller must not be left in silence.
            self._on_token(turn, TOOL_LOOP_APOLOGY)
            self._flush_tts(turn)
        if done.finish_reason == llm_pb2.FINISH_REASON_ERROR:
            self._notice(grpc.StatusCode.INTERNAL, "the language model failed on this turn", "llm")
        self._maybe_turn_complete(turn)

    # tools

    def _run_tools(self, turn: Turn) -> None:
        calls = list(turn.tool_calls)
        self.sm.to(State.CALLING_TOOL, f"tool {calls[0].name}")
        filler, filler_after = self.tools.filler(calls[0].name)
        for call in calls:
            self._event(TE.KIND_TOOL_CALL_STARTED, turn.turn_id, tool_name=call.name)
        if filler and not turn.first_audio_at:
            self._later(filler_after, "filler", (turn.turn_id, filler))

        async def run_all() -> None:
            results = await asyncio.gather(*(self.tools.run(c) for c in calls))
            self.post("tools_done", (turn.turn_id, calls, results))

        task = asyncio.create_task(run_all())
        self._tool_tasks.add(task)
        task.add_done_callback(self._tool_tasks.discard)

    def _on_filler(self, payload: tuple[int, str]) -> None:
        turn_id, text = payload
        turn = self.turn
        if turn is None or turn.turn_id != turn_id or not self.sm.is_(State.CALLING_TOOL) or turn.first_audio_at:
            return
        turn.segments.append(Segment(-1, flushed=True))
        if not turn.first_tts_text_at:
            turn.first_tts_text_at = time.monotonic()
        self.streams["tts"].send(tts_pb2.SynthesizeRequest(text=text))
        self.streams["tts"].send(tts_pb2.SynthesizeRequest(control=tts_pb2.TtsControl(
            action=tts_pb2.TtsControl.ACTION_FLUSH)))

    def _on_tools_done(self, payload: tuple[int, list[audio_pb2.ToolCall], list[ToolResult]]) -> None:
        turn_id, calls, results = payload
        turn = self.turn
        if turn is None or turn.turn_id != turn_id or turn.cancelled:
            return
        for call, result in zip(calls, results, strict=True):
            turn.tool_s += result.seconds
            telemetry.TOOL_CALLS.labels(call.name, "ok" if result.ok else "error").inc()
            self.conversation.add(Message("tool", result.text, tool_call_id=call.id))
            self._event(TE.KIND_TOOL_CALL_FINISHED, turn.turn_id, tool_name=call.name)
            if not result.ok:
                self._notice(grpc.StatusCode.UNAVAILABLE, result.text, f"tool:{call.name}")
        self.sm.to(State.AGENT_SPEAKING if turn.first_audio_at else State.THINKING, "tool results")
        self._generate(turn)

    # TTS

    def _segment_for(self, turn: Turn, utterance_id: int) -> Segment | None:
        for seg in turn.segments:
            if seg.utterance_id == utterance_id:
                return seg
        for seg in turn.segments:
            if seg.utterance_id == 0:
                seg.utterance_id = utterance_id
                return seg
        return None

    def _on_tts(self, response: tts_pb2.SynthesizeResponse) -> None:
        which = response.WhichOneof("result")
        if self.tts_draining:
            if which == "done" and response.done.cancelled:
                self.tts_draining = False
            return  # the tail of a cancelled turn
        turn = self.turn
        if turn is None or turn.cancelled:
            return
        if which == "audio":
            a = response.audio
            seg = self._segment_for(turn, a.utterance_id)
            if seg is None:
                return
            self.playout.enqueue(Chunk(turn.turn_id, a.data, self.out_spec.duration_ms(len(a.data)), a.mark,
                                       float(a.audio_offset_ms), seg.base_chars))
        elif which == "done":
            seg = self._segment_for(turn, response.done.utterance_id)
            if seg is not None:
                seg.done = True
            self._maybe_turn_complete(turn)

    def _on_first_audio(self, turn_id: int) -> None:
        turn = self.turn
        if turn is None or turn.turn_id != turn_id:
            return
        turn.first_audio_at = time.monotonic()
        if self.sm.is_(State.THINKING, State.CALLING_TOOL, State.LISTENING):
            self.sm.to(State.AGENT_SPEAKING, "first audio out")
        self._event(TE.KIND_AGENT_STARTED_SPEAKING, turn.turn_id)
        if turn.user_text:  # a greeting has no caller speech to measure from
            self._emit(agent_pb2.ConverseResponse(latency=self._latency(turn)))

    def _latency(self, turn: Turn) -> agent_pb2.TurnLatency:
        ms = 1000.0
        v2v = (turn.first_audio_at - turn.speech_end_at) * ms
        endpoint_wait = max(0.0, turn.endpoint_at - turn.speech_end_at) * ms
        stt = max(0.0, turn.final_at - turn.endpoint_at) * ms
        ttft = max(0.0, turn.first_token_at - turn.generate_sent_at) * ms if turn.first_token_at else 0.0
        ttfa = max(0.0, turn.first_audio_at - turn.first_tts_text_at) * ms if turn.first_tts_text_at else 0.0
        tool = turn.tool_s * ms
        speculative = turn.generate_sent_at < turn.final_at
        if speculative:  # the stages overlapped the endpoint wait: overhead is release -> audio out
            ready = max(turn.final_at, self.playout.first_ready_at or turn.final_at)
            overhead = max(0.0, turn.first_audio_at - ready) * ms
        else:
            overhead = v2v - endpoint_wait - stt - ttft - ttfa - tool
        latency = agent_pb2.TurnLatency(
            turn_id=turn.turn_id, voice_to_voice_ms=v2v, endpoint_wait_ms=endpoint_wait, stt_finalization_ms=stt,
            llm_time_to_first_token_ms=ttft, tts_time_to_first_audio_ms=ttfa, tool_ms=tool,
            orchestration_overhead_ms=overhead, speculative=speculative)
        telemetry.observe(latency)
        return latency

    def _on_sent_all(self, turn_id: int) -> None:
        # All audio is out; the turn ends when the caller has had time to hear it (barge-in still trims).
        self._later(self.playout.remaining_playback_s(), "played_all", turn_id)

    def _on_played_all(self, turn_id: int) -> None:
        turn = self.turn
        if turn is None or turn.turn_id != turn_id or turn.cancelled:
            return
        self._finish_turn(turn, heard=turn.text)

    def _maybe_turn_complete(self, turn: Turn) -> None:
        if turn.speculative:
            return  # decided at the endpoint (_confirm_speculation)
        if turn.llm_done and all(s.done for s in turn.segments):
            if not self.playout.sent and not self.playout.turn_audio_ms:
                self._finish_turn(turn, heard=turn.text)  # nothing to say (or nothing speakable)
            else:
                self.playout.complete()

    def _finish_turn(self, turn: Turn, heard: str) -> None:
        if heard[turn.history_chars:].strip():
            self.conversation.add(Message("assistant", heard[turn.history_chars:].strip()))
        self.turn = None
        if turn.first_audio_at:
            self._event(TE.KIND_AGENT_STOPPED_SPEAKING, turn.turn_id)
        if self.sm.is_(State.THINKING, State.AGENT_SPEAKING, State.CALLING_TOOL):
            self.sm.to(State.LISTENING, "turn complete")
        self._maybe_finish()

    # barge-in

    def _interrupt(self, reason: str, reaction_from: float) -> None:
        turn = self.turn
        if turn is None:
            return
        if turn.speculative:
            self._void_speculation(turn)
            return
        turn.cancelled = True
        self.streams["llm"].send(llm_pb2.ChatRequest(cancel=llm_pb2.CancelRequest(request_id=turn.request_id)))
        if any(not s.done for s in turn.segments):
            self.tts_draining = True
            self.streams["tts"].send(tts_pb2.SynthesizeRequest(control=tts_pb2.TtsControl(
                action=tts_pb2.TtsControl.ACTION_CANCEL)))
        played = self.playout.played_ms()
        heard_chars = self.playout.heard_chars(played)
        if not self.playout.paused_at:  # not already stopped at speech start (typed input, client control)
            telemetry.BARGE_IN.observe(max(0.0, time.monotonic() - reaction_from))
        self.playout.clear()
        heard = _cut_at_word(turn.text, heard_chars)
        if turn.first_audio_at:
            telemetry.INTERRUPTIONS.inc()
            self.sm.to(State.INTERRUPTED, reason)
            self._event(TE.KIND_INTERRUPTED, turn.turn_id, heard_text=heard)
            self.turn = None
            if heard[turn.history_chars:].strip():
                self.conversation.add(Message("assistant", heard[turn.history_chars:].strip() + " —"))
        else:
            # Nothing was heard yet: the caller just kept talking. Their words join the same user turn.
            self.turn = None
            self.sm.to(State.LISTENING if self.sm.is_(State.THINKING, State.CALLING_TOOL) else self.sm.state,
                       reason)
        log.info("turn %d interrupted (%s); heard %d of %d chars", turn.turn_id, reason, len(heard), len(turn.text))

    # greeting

    def _greet(self, text: str) -> None:
        turn = Turn(next(self._turn_ids), "", time.monotonic(), time.monotonic(), time.monotonic())
        turn.llm_done = True
        turn.text = text
        turn.first_tts_text_at = time.monotonic()
        self.turn = turn
        self.playout.start_turn(turn.turn_id)
        turn.segments.append(Segment(0, flushed=True))
        self.streams["tts"].send(tts_pb2.SynthesizeRequest(text=text))
        self.streams["tts"].send(tts_pb2.SynthesizeRequest(control=tts_pb2.TtsControl(
            action=tts_pb2.TtsControl.ACTION_FLUSH)))
        self.sm.to(State.THINKING, "greeting")

    # lost backends

    def _on_stt_lost(self, payload: tuple[StageStream, grpc.aio.AioRpcError]) -> None:
        self._lost("stt", *payload)

    def _on_llm_lost(self, payload: tuple[StageStream, grpc.aio.AioRpcError]) -> None:
        self._lost("llm", *payload)

    def _on_tts_lost(self, payload: tuple[StageStream, grpc.aio.AioRpcError]) -> None:
        self._lost("tts", *payload)

    def _on_llm_end(self, stream: StageStream) -> None:
        if stream is self.streams.get("llm") and not self._ended.is_set():
            self._lost("llm", stream, None)

    def _on_tts_end(self, stream: StageStream) -> None:
        if stream is self.streams.get("tts") and not self._ended.is_set():
            self._lost("tts", stream, None)

    def _on_reconnected(self, payload: tuple[str, StageStream | BaseException]) -> None:
        stage, result = payload
        if isinstance(result, BaseException):
            code = result.code if isinstance(result, BackendError) else grpc.StatusCode.UNAVAILABLE
            raise StreamError(code, f"the {stage} stage was lost and no other replica could take over: {result}")
        self._attach(stage, result)
        self._notice(grpc.StatusCode.UNAVAILABLE, f"{stage} replica lost; continued on {result.target}", stage)
        telemetry.BACKEND_RECONNECTS.labels(stage).inc()
        turn = self.turn
        if turn is None:
            return
        if stage == "llm" and not turn.llm_done:
            if turn.first_token_at:  # part of the answer is out: say it, end the turn there
                turn.llm_done = True
                self._flush_tts(turn)
                self._maybe_turn_complete(turn)
            else:
                self._generate(turn)
        elif stage == "tts":
            self._respeak_after_tts_loss(turn)

    def _respeak_after_tts_loss(self, turn: Turn) -> None:
        """A new TTS replica speaks what the lost one had not sent yet."""
        spoken = self.playout.heard_chars(self.playout.sent_ms) if self.playout.sent else 0
        rest = turn.text[spoken:]
        for seg in turn.segments:
            seg.done = seg.flushed = True
            seg.utterance_id = -1  # retired: the new stream numbers its utterances from 1 again
        self.tts_draining = False  # a new stream: nothing of the old one will arrive
        if rest.strip():
            turn.segments.append(Segment(spoken, flushed=turn.llm_done))
            self.streams["tts"].send(tts_pb2.SynthesizeRequest(text=rest))
            if turn.llm_done:
                self.streams["tts"].send(tts_pb2.SynthesizeRequest(control=tts_pb2.TtsControl(
                    action=tts_pb2.TtsControl.ACTION_FLUSH)))
        else:
            self._maybe_turn_complete(turn)

    def _lost(self, stage: str, stream: StageStream, err: grpc.aio.AioRpcError | None) -> None:
        if stream is not self.streams.get(stage) or self._ended.is_set():
            return
        code = err.code() if err is not None else grpc.StatusCode.UNAVAILABLE
        if err is not None and code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                            grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            raise StreamError(code, f"the {stage} stage refused this session: {err.details()}")
        self._readers.pop(stage, None)
        stream.close()
        self.backends_pool(stage).cool_down(stream.target, 5.0)
        if self._reconnects[stage] >= self.reconnect_attempts:
            raise StreamError(grpc.StatusCode.UNAVAILABLE,
                              f"the {stage} stage was lost ({code.name}) {self._reconnects[stage]} times; ending")
        self._reconnects[stage] += 1
        if stage == "stt":
            self.stt_offset_base_ms = self.audio_ms
            self._arrivals.clear()
        config = {"stt": lambda: stt_pb2.RecognizeRequest(config=self._stt_config),
                  "llm": lambda: llm_pb2.ChatRequest(config=self._llm_config),
                  "tts": lambda: tts_pb2.SynthesizeRequest(config=self._tts_config)}[stage]()
        method = {"stt": "StreamingRecognize", "llm": "Chat", "tts": "StreamingSynthesize"}[stage]
        pool = self.backends_pool(stage)

        async def reopen() -> None:
            try:
                result: StageStream | BaseException = await pool.open(method, config, exclude={stream.target})
            except Exception as exc:
                result = exc
            self.post("reconnected", (stage, result))

        task = asyncio.create_task(reopen())
        self._tool_tasks.add(task)
        task.add_done_callback(self._tool_tasks.discard)

    def backends_pool(self, stage: str) -> BackendPool:
        return getattr(self.backends, stage)


def _code(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


def _cut_at_word(text: str, chars: int) -> str:
    """The heard prefix, ending on a whole word (a half-heard word was not understood)."""
    if chars >= len(text):
        return text.strip()
    cut = text[:chars]
    if chars < len(text) and not text[chars].isspace() and " " in cut:
        cut = cut[: cut.rfind(" ")]
    elif " " not in cut and chars < len(text) and not text[chars].isspace():
        cut = ""
    return cut.strip()

