"""The answer to a user turn: LLM rounds, the tool loop, speculation on STT's preview and prewarm.

`start_turn` is where an answer begins: from the caller's words (a final transcript, typed text or a
speculative preview). Each round is one `generate` on the session's LLM stream; its tokens go to
speech out as they come, tool calls run off the event loop and come back as `tools_done`, and the
loop is bounded (`MAX_TOOL_ROUNDS`, then a forced answer). A speculative turn is prepared while STT
waits for the endpoint and is confirmed or voided when the final arrives.

Hybrid mode's answer (orchestrator/hybrid.py) subclasses this one: `start_audio_turn` starts from the
caller's audio instead of text (the same `Turn`, rounds and tool loop); the session wires whichever answer
its mode needs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from voxgrid.orchestrator import telemetry
from voxgrid.orchestrator.context import Message
from voxgrid.orchestrator.language import instruction
from voxgrid.orchestrator.limits import user_turn_problem
from voxgrid.orchestrator.state import State
from voxgrid.orchestrator.tools import ToolResult, ToolRunner
from voxgrid.orchestrator.turns import Turn

from voxgrid.errors import Reason, status_proto
from voxgrid.v1 import agent_pb2, audio_pb2, llm_pb2

if TYPE_CHECKING:
    from voxgrid.orchestrator.session import PipelineSession

log = logging.getLogger("voxgrid.orchestrator.answer")
TE = agent_pb2.TurnEvent
MAX_TOOL_ROUNDS = 3  # generate requests of one turn that may call tools
FORCE_ANSWER = ("Answer me now from the tool results above, in one or two short spoken sentences. "
                "Do not call a tool again.")
TOOL_LOOP_APOLOGY = "Sorry, I could not work that out."


class Answer:
    """Writes the agent's answer to the current turn with the LLM (and tools)."""

    def __init__(self, session: PipelineSession, tools: ToolRunner, max_tokens: int,
                 speculative_turns: bool) -> None:
        self.s = session
        self.tools = tools
        self.speculative_turns = speculative_turns
        self.sampling = audio_pb2.SamplingParams()
        self.sampling.CopyFrom(session.config.sampling)
        if not self.sampling.HasField("max_tokens"):
            self.sampling.max_tokens = max_tokens
        self._request_ids = itertools.count(1)
        self._prewarmed_text = ""
        self._prewarm_in_flight = False

    def handlers(self) -> dict[str, Callable[[Any], None]]:
        return {"llm": self._on_llm, "tools_done": self._on_tools_done}

    @property
    def speculates(self) -> bool:
        """Whether to prepare answers from STT's preview (the `speculative_turns` setting)."""
        return self.speculative_turns

    # --- starting, confirming, cancelling -------------------------------------------------------

    def prewarm(self, partial: str) -> None:
        """The caller is still talking: let the LLM prefill the context with what they said so far."""
        if self._prewarm_in_flight or partial == self._prewarmed_text:
            return
        self._prewarmed_text = partial
        self._send_prewarm(partial)

    def prewarm_context(self) -> None:
        """The call starts: let the LLM prefill the persona and history before the caller's first words.

        An engine that caches per session (transformers) otherwise computes the whole persona when the
        first partial's prewarm arrives, which for a short first question is at the end of the speech: the
        answer then queued behind it (0.2-0.5 s on 2 CPU cores, a fresh session per question). vLLM shares
        the prefix across sessions, so there this costs one cached lookup."""
        if not self._prewarm_in_flight:
            self._send_prewarm(None)

    def _send_prewarm(self, pending_user: str | None) -> None:
        """One prewarm in flight per session: the next waits for its `prewarmed` (or an error)."""
        self._prewarm_in_flight = True
        self.s.links.send("llm", llm_pb2.ChatRequest(prewarm=llm_pb2.PrewarmRequest(
            messages=self.s.conversation.messages(pending_user=pending_user), tools=self.tools.schemas())))

    def start_turn(self, user_text: str, *, speech_end_at: float, endpoint_at: float, final_at: float,
                   speculative_utterance: int = 0) -> None:
        """Answer `user_text`; a speculative turn (from STT's preview) holds its audio until confirmed."""
        s = self.s
        history = s.conversation.history
        snapshot = (len(history), history[-1].content if history else None)
        if not (self._last_turn_unanswered() and self._fits_merged(user_text)
                and s.conversation.append_to_last_user(user_text)):
            s.conversation.add(Message("user", user_text))
        self._prewarmed_text = ""
        language = s.language.choose(turn_in_flight=s.turn is not None)
        turn = Turn(s.next_turn_id(), user_text, speech_end_at, endpoint_at, final_at,
                    speculative=bool(speculative_utterance), utterance_id=speculative_utterance,
                    prepared_at=time.monotonic() if speculative_utterance else 0.0,
                    history_snapshot=snapshot)
        turn.language = language
        s.turn = turn
        s.speech.start_turn(turn.turn_id, held=turn.speculative)
        if not turn.speculative:
            s.sm.to(State.THINKING, "caller finished")
        self._generate(turn)

    def _fits_merged(self, user_text: str) -> bool:
        """Unanswered turns merge into one user message only while it stays within the turn limits, so
        a caller who keeps talking over an unfinished answer cannot grow one message without bound."""
        conversation, limits = self.s.conversation, self.s.limits
        merged = f"{conversation.history[-1].content} {user_text}"
        max_chars = min(limits.max_user_text_chars, limits.max_transcript_chars)
        return not user_turn_problem("turn", merged, max_chars, conversation.max_history_tokens)

    def _last_turn_unanswered(self) -> bool:
        """The previous user message got no answer (its turn was cancelled before any audio)."""
        h = self.s.conversation.history
        return bool(h) and h[-1].role == "user" and not h[-1].added

    def cancel(self, turn: Turn) -> None:
        """Stop writing: one cancel on the LLM stream (the stream stays open)."""
        turn.cancelled = True
        self.s.links.send("llm", llm_pb2.ChatRequest(cancel=llm_pb2.CancelRequest(request_id=turn.request_id)))

    def void_speculation(self, turn: Turn, outcome: str = "voided") -> None:
        """The caller went on talking (or the final said other words: `missed`): drop the prepared answer
        without a trace."""
        self.cancel(turn)
        self.s.speech.stop(turn)
        history = self.s.conversation.history
        length, last_user = turn.history_snapshot
        del history[length:]
        if last_user is not None and history:
            history[-1].content = last_user
        self.s.turn = None
        telemetry.SPECULATIONS.labels(outcome).inc()

    def confirm_speculation(self, turn: Turn, speech_end_at: float, endpoint_at: float, final_at: float,
                            final_text: str = "") -> None:
        """The final says the preview's words: the prepared answer is the answer; its audio may go out.
        The history keeps the final's text (its case and punctuation), the accurate transcript."""
        turn.speculative = False
        turn.speech_end_at, turn.endpoint_at, turn.final_at = speech_end_at, endpoint_at, final_at
        turn.speculation = agent_pb2.SPECULATION_OUTCOME_HIT
        turn.speculation_lead_s = max(0.0, final_at - turn.prepared_at)
        if final_text and final_text != turn.user_text:
            for message in reversed(self.s.conversation.history):
                if message.role == "user":
                    if message.content.endswith(turn.user_text):
                        message.content = message.content[: len(message.content) - len(turn.user_text)] + final_text
                    break
            turn.user_text = final_text
        self.s.speech.show_held_text(turn)
        self.s.sm.to(State.THINKING, "caller finished (answer prepared)")
        self.s.speech.release()
        telemetry.SPECULATIONS.labels("confirmed").inc()
        if turn.held_done is not None:
            done, turn.held_done = turn.held_done, None
            self._on_generation_done(turn, done)
        else:
            self.s.speech.maybe_turn_complete(turn)

    def llm_relinked(self, turn: Turn) -> None:
        """A new LLM replica took over mid-turn."""
        if turn.llm_done:
            return
        if turn.first_token_at:  # part of the answer is out: say it, end the turn there
            turn.llm_done = True
            self.s.speech.flush(turn)
            self.s.speech.maybe_turn_complete(turn)
        else:
            self._generate(turn)

    # --- LLM rounds -----------------------------------------------------------------------------

    def _generate(self, turn: Turn, force_answer: bool = False) -> None:
        turn.rounds += 1
        turn.forced = force_answer
        turn.round_start = len(turn.text)
        turn.held_text = ""
        turn.request_id = f"{turn.turn_id}.{turn.rounds}.{next(self._request_ids)}"
        turn.llm_done = False
        turn.tool_calls = []
        turn.generate_sent_at = time.monotonic()
        self.s.links.send("llm", llm_pb2.ChatRequest(generate=llm_pb2.GenerateRequest(
            request_id=turn.request_id, messages=self._messages(force_answer, turn), sampling=self.sampling,
            tools=[] if force_answer else self.tools.schemas())))

    def _messages(self, force_answer: bool, turn: Turn | None = None) -> list[llm_pb2.ChatMessage]:
        messages = self.s.conversation.messages()
        line = instruction(turn.language if turn is not None else None)
        if line:  # the turn's language, a transient system line after the history (the prefix cache keeps)
            messages.append(llm_pb2.ChatMessage(role=llm_pb2.ROLE_SYSTEM, content=line))
        if force_answer:  # a transient nudge, never kept in the history
            messages.append(llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, content=FORCE_ANSWER))
        return messages

    def _on_llm(self, response: llm_pb2.ChatResponse) -> None:
        which = response.WhichOneof("event")
        if which == "prewarmed":
            self._prewarm_in_flight = False
            return
        if which == "done":  # every request's tokens count, a cancelled one's too
            self.s.usage.llm_done(response.done)
        turn = self.s.turn
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
            self.s.notice(grpc.StatusCode(_code(response.error.code)), response.error.message, "llm")

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
        if not turn.first_token_at:
            turn.first_token_at = time.monotonic()
        self.s.speech.speak(turn, text)

    def _on_generation_done(self, turn: Turn, done: llm_pb2.GenerationDone) -> None:
        speech = self.s.speech
        if turn.speculative and done.finish_reason == llm_pb2.FINISH_REASON_TOOL_CALLS:
            turn.held_done = done  # no tool side effects before the caller has really finished
            return
        speech.flush(turn)
        if done.finish_reason == llm_pb2.FINISH_REASON_TOOL_CALLS and turn.tool_calls:
            fresh = [c for c in turn.tool_calls if (c.name, c.arguments_json) not in turn.seen_calls]
            if turn.forced:  # asked to answer and called a tool anyway: say so rather than loop
                self._on_token(turn, (" " if turn.text else "") + TOOL_LOOP_APOLOGY)
                speech.flush(turn)
                turn.llm_done = True
                speech.maybe_turn_complete(turn)
                return
            if not fresh or turn.rounds >= MAX_TOOL_ROUNDS:
                # Small models can loop on a tool; the results are in the context: make it answer.
                self._generate(turn, force_answer=True)
                return
            turn.tool_calls = fresh
            turn.seen_calls.update((c.name, c.arguments_json) for c in fresh)
            self.s.conversation.add(Message("assistant", turn.text[turn.history_chars:].strip(),
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
            speech.flush(turn)
        if done.finish_reason == llm_pb2.FINISH_REASON_ERROR:
            self.s.notice(grpc.StatusCode.INTERNAL, "the language model failed on this turn", "llm")
        speech.maybe_turn_complete(turn)

    # --- tools ----------------------------------------------------------------------------------

    def _run_tools(self, turn: Turn) -> None:
        calls = list(turn.tool_calls)
        self.s.sm.to(State.CALLING_TOOL, f"tool {calls[0].name}")
        filler, filler_after = self.tools.filler(calls[0].name)
        for call in calls:
            self.s.event(TE.KIND_TOOL_CALL_STARTED, turn.turn_id, tool_name=call.name, tool_call=tool_call_info(call))
        if filler and not turn.first_audio_at:
            self.s.later(filler_after, "filler", (turn.turn_id, filler))

        async def run_all() -> None:
            results = await asyncio.gather(*(self.tools.run(c) for c in calls))
            self.s.post("tools_done", (turn.turn_id, calls, results))

        self.s.spawn(run_all())

    def _on_tools_done(self, payload: tuple[int, list[audio_pb2.ToolCall], list[ToolResult]]) -> None:
        turn_id, calls, results = payload
        for result in results:  # tools that ran count, even for a turn cut off meanwhile
            self.s.usage.tool_run(result.seconds)
        turn = self.s.turn
        if turn is None or turn.turn_id != turn_id or turn.cancelled:
            return
        for call, result in zip(calls, results, strict=True):
            turn.tool_s += result.seconds
            telemetry.TOOL_CALLS.labels(call.name, "ok" if result.ok else "error").inc()
            self.s.conversation.add(Message("tool", result.text, tool_call_id=call.id))
            self.s.event(TE.KIND_TOOL_CALL_FINISHED, turn.turn_id, tool_name=call.name,
                         tool_call=tool_call_info(call, result))
            if not result.ok:
                self.s.notice(_tool_error_code(result), result.text, f"tool:{call.name}")
        self.s.sm.to(State.AGENT_SPEAKING if turn.first_audio_at else State.THINKING, "tool results")
        self._generate(turn)


def _tool_error_code(result: ToolResult) -> grpc.StatusCode:
    return grpc.StatusCode.DEADLINE_EXCEEDED if result.timed_out else grpc.StatusCode.UNAVAILABLE


def tool_call_info(call: audio_pb2.ToolCall, result: ToolResult | None = None) -> agent_pb2.AgentToolCall:
    """TurnEvent.tool_call: the call as the LLM wrote it and, once finished, its result or error and duration."""
    info = agent_pb2.AgentToolCall(call_id=call.id, name=call.name, arguments_json=call.arguments_json)
    if result is not None:
        info.duration_ms = result.seconds * 1000
        if result.ok:
            info.result = result.text
        else:
            info.error.CopyFrom(status_proto(_tool_error_code(result), result.text, reason=Reason.TOOL_FAILED))
    return info


def _code(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN
