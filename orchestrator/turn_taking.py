"""Turn taking: when a user turn starts and ends, and whether speech over the agent is a barge-in.

Caller audio goes to STT here (and its arrival times are kept, so STT's offsets map back to wall-clock
time for the latency record). STT's speech events and transcripts decide the turn: speech started
while the agent talks pauses its audio and becomes an interruption only on evidence (enough words,
or long enough and not a backchannel); a preview starts a speculative answer; a final starts (or
confirms) the answer: a speculative answer is confirmed when the final has the preview's words (case,
punctuation and spacing aside: STT's fast preview is a cheaper decode than the final), else dropped
unseen and the final answered afresh (`TurnLatency.speculation` says which). Typed text is a user turn
too. The end of a turn itself is STT's decision
(fixed silence, or its semantic turn model, per `SessionConfig.endpointing`); the final says how it was
made, and the turn record carries that on (`TurnLatency.endpoint_mode`, `end_of_turn_probability`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from difflib import SequenceMatcher
from typing import TYPE_CHECKING, Any

import grpc
from voxgrid.orchestrator import telemetry
from voxgrid.orchestrator.state import State

from voxgrid.server.streams import StreamError
from voxgrid.v1 import agent_pb2, stt_pb2

if TYPE_CHECKING:
    from voxgrid.orchestrator.session import PipelineSession

log = logging.getLogger("voxgrid.orchestrator.turn_taking")
TE = agent_pb2.TurnEvent
# Backchannels never interrupt, whatever their length.
BACKCHANNELS = frozenset({"uh-huh", "uh huh", "mhm", "mm-hmm", "mm hmm", "hmm", "yeah", "yes", "yep", "okay", "ok",
                          "right", "sure", "i see", "got it", "uh", "um", "ah", "oh"})


def words(text: str) -> list[str]:
    return [w for w in text.replace(",", " ").replace(".", " ").split() if w]


def same_words(a: str, b: str) -> bool:
    """Two transcripts with the same words, case, punctuation and spacing aside: an answer prepared from
    one answers the other."""
    return _norm_words(a) == _norm_words(b)


def is_backchannel(text: str) -> bool:
    return text.strip().lower().strip(".,!?") in BACKCHANNELS


def _norm_words(text: str) -> list[str]:
    return [w for w in ("".join(c if c.isalnum() or c == "'" else " " for c in text.lower())).split() if w]


# Words any sentence has: they say nothing about whose sentence it is, so the match leaves them out.
_FUNCTION_WORDS = frozenset("a an and are as at be but by for from has have i if in is it it's its of on or so "
                            "that the this to was we will with you your".split())


def _similar(a: str, b: str) -> bool:
    """The same word, or what STT makes of an echo's residue: "limited" for "unlimited", "story" for "storage"."""
    if a == b:
        return True
    if min(len(a), len(b)) >= 4 and (a in b or b in a or a[:4] == b[:4]):
        return True
    return SequenceMatcher(None, a, b, autojunk=False).ratio() >= 0.75


def echo_match(heard: str, agent: str) -> float:
    """Share of the caller's words that are (nearly: STT mishears an echo's residue, "story" for "storage")
    among the agent's words of the moment (1.0: all of them), function words left out unless there is
    nothing else. The window is a few seconds of speech, so order is not needed; a caller's own sentence
    shares a word or two with it at most."""
    caller, said = _norm_words(heard), set(_norm_words(agent))
    if not caller or not said:
        return 0.0
    caller = [w for w in caller if w not in _FUNCTION_WORDS] or caller
    return sum(1 for w in caller if any(_similar(w, s) for s in said)) / len(caller)


DEFAULT_MIN_INTERRUPTION_WORDS = 2  # TurnTakingConfig's documented defaults (0 = these)
DEFAULT_MIN_INTERRUPTION_MS = 400
ECHO_WINDOW_BEFORE_MS = 1500  # the agent's words this long before the caller's speech started may echo in it
ECHO_WINDOW_AFTER_MS = 500
ECHO_LIKENESS = 0.96  # with echo cancellation: caller audio whose loudness follows the agent's this closely is echo
# With echo cancellation: an utterance whose audio lost this much energy in the echo stage was echo (cancelled or
# gated), whatever STT made of it (residue, or a hallucination on near-silence: "Thank you.", "I'm sorry."). Measured
# under load: echo alone 19-40 dB removed, a caller over the echo 2 dB.
ECHO_REMOVED_DB = 10.0
# An utterance whose speech began this soon after the agent's audio was played out may be the echo of its last
# words (echo path delay plus the client's jitter buffer). Kept short: a caller who answers at once and repeats the
# agent's words ("the capital of France? ...") is a real turn, and callers do answer within a second.
ECHO_AFTER_TURN_S = 0.5


class TurnTaking:
    """The caller's side of the conversation, from audio and STT results to user turns."""

    def __init__(self, session: PipelineSession, turn_taking: agent_pb2.TurnTakingConfig) -> None:
        self.s = session
        self.configure(turn_taking)
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
        self._echo_suspects: set[int] = set()  # utterances that began right after the agent stopped
        self.echo_rejected = 0  # caller utterances rejected as echo since the previous turn record
        self.echo_seen = False  # this call has echoed: the agent's words came back as caller speech

    def handlers(self) -> dict[str, Callable[[Any], None]]:
        return {"stt": self._on_stt, "barge_check": self._on_barge_check, "edge_audio": self._on_edge_audio}

    def configure(self, tt: agent_pb2.TurnTakingConfig) -> None:
        """The session's turn-taking knobs (at start, and on a live `update`: the next decision uses them)."""
        self.min_interruption_words = tt.min_interruption_words or DEFAULT_MIN_INTERRUPTION_WORDS
        self.min_interruption_s = (tt.min_interruption_ms or DEFAULT_MIN_INTERRUPTION_MS) / 1000
        self.allow_interruptions = tt.allow_interruptions if tt.HasField("allow_interruptions") else True
        self.echo_check = tt.echo_check if tt.HasField("echo_check") else True
        self.echo_match_ratio = tt.echo_match_ratio or 0.6

    # --- input from the caller ------------------------------------------------------------------

    def caller_audio(self, data: bytes) -> None:
        spec = self.s.in_spec
        if not spec.packetized and len(data) % spec.bytes_per_sample:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT,
                              f"audio of {len(data)} bytes is not a whole number of {spec} samples: "
                              "send whole samples in every message")
        try:  # the edge: Opus decoding and noise suppression (passes the bytes through when neither is on)
            ms = self.s.caller_edge.message_ms(data)
            to_stt = self.s.caller_edge.feed(data)
        except ValueError as exc:
            raise StreamError(grpc.StatusCode.INVALID_ARGUMENT, f"audio: {exc}") from exc
        self.audio_ms += ms
        self.s.usage.caller_audio(ms)
        self._arrivals.append((self.audio_ms - self.stt_offset_base_ms, time.monotonic()))
        if to_stt:
            self.send_to_stt(to_stt)

    def _on_edge_audio(self, data: bytes) -> None:
        """Caller audio back from the suppression worker (neural suppressors), in order."""
        if data:
            self.send_to_stt(data)

    def send_to_stt(self, data: bytes) -> None:
        """Backend audio to STT (hybrid mode also keeps it, to hand the utterance to the LLM)."""
        self.s.links.send("stt", stt_pb2.RecognizeRequest(audio=data))

    def typed_text(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        now = time.monotonic()
        if self.s.turn is not None:
            self.s.interrupt("typed input", reaction_from=now)
        self.s.answer.start_turn(text, speech_end_at=now, endpoint_at=now, final_at=now)

    def end_of_input(self) -> None:
        """The caller half-closed: STT finalises what it heard, then closes its stream."""
        self.s.links.send("stt", stt_pb2.RecognizeRequest(control=stt_pb2.SttControl(
            action=stt_pb2.SttControl.ACTION_END)))

    def stt_restarted(self) -> None:
        """A new STT stream counts offsets from 0 again: map them from the audio sent so far."""
        self.stt_offset_base_ms = self.audio_ms
        self._arrivals.clear()

    def _arrival_of(self, stt_offset_ms: float) -> float:
        for offset, at in self._arrivals:
            if offset >= stt_offset_ms:
                return at
        return time.monotonic()

    # --- STT results ----------------------------------------------------------------------------

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
            self.s.emit(agent_pb2.ConverseResponse(user_transcript=tr))
            if tr.is_final:
                self._on_final(tr)
            else:
                self._on_partial(tr)

    def _on_speech_started(self, ev: stt_pb2.SpeechEvent) -> None:
        s = self.s
        self.utterance_id = ev.utterance_id
        self.utterance_started_at = self._arrival_of(ev.audio_offset_ms)
        self.utterance_text = ""
        if s.turn is not None:
            # The agent is busy: this may be an interruption, a backchannel or noise. Decide on evidence.
            if self.allow_interruptions and s.turn.interruptible:
                self._barge_pending = ev.utterance_id
                s.later(self.min_interruption_s, "barge_check", ev.utterance_id)
                if not s.turn.speculative and s.caller_edge.echo is None:
                    # Stop sending at once; the client's short buffer keeps playing. A backchannel resumes.
                    # Not with echo cancellation: the gap would move the echo under the canceller's reference
                    # (it must re-learn the path, and echo leaks meanwhile); the words decide, then it stops.
                    s.speech.pause()
                    telemetry.BARGE_IN.observe(max(0.0, time.monotonic() - self.utterance_started_at))
            else:
                self._backchannel_utterances.add(ev.utterance_id)
            return
        ended_at, _ = s.speech.last_spoken
        # Only on a line known to echo (cancellation asked for, or echo already caught in this call): elsewhere a
        # quick caller repeating the agent's words must stay a turn.
        echo_prone = s.caller_edge.echo is not None or self.echo_seen
        if self.echo_check and echo_prone and ended_at and self.utterance_started_at - ended_at < ECHO_AFTER_TURN_S:
            self._echo_suspects.add(ev.utterance_id)
        s.sm.to(State.USER_SPEAKING, "speech started")
        s.event(TE.KIND_USER_STARTED_SPEAKING)

    def _on_barge_check(self, utterance_id: int) -> None:
        if self._barge_pending != utterance_id or is_backchannel(self.utterance_text):
            return
        if self.echo_check and len(words(self.utterance_text)) < self.min_interruption_words:
            return  # long enough, but no words to tell the caller from the agent's echo yet: the words decide
        if self._rejected_as_echo(self.utterance_text):
            return
        self._confirm_barge_in()

    # --- the self-echo check ----------------------------------------------------------------------

    def _agent_words_now(self) -> str:
        """What the agent was saying around the current utterance: from a little before it started to now."""
        if self.s.turn is None:  # the answer ended while the utterance was pending: its last words
            return self.s.speech.last_spoken[1]
        playout = self.s.speech.playout
        now_ms = playout.played_ms()
        start_ms = now_ms - 1000 * max(0.0, time.monotonic() - self.utterance_started_at)
        return self.s.speech.text_playing(start_ms - ECHO_WINDOW_BEFORE_MS, now_ms + ECHO_WINDOW_AFTER_MS)

    def _is_echo(self, text: str, agent_words: str) -> bool:
        return self.echo_check and echo_match(text, agent_words) >= self.echo_match_ratio

    def _rejected_as_echo(self, text: str) -> bool:
        """A would-be interruption whose words are the agent's own: resume the agent, count it."""
        if not self.echo_check:
            return False
        agent_words = self._agent_words_now()
        echo = self.s.caller_edge.echo
        likeness = removed = 0.0
        if echo is not None:  # the sound itself: does the caller's audio follow the agent's loudness contour?
            now = time.monotonic()
            window = min(2.0, now - self.utterance_started_at)
            likeness = echo.echo_likeness(window)
            # and did anything of it get through the canceller and gate (the utterance's own audio: a final can
            # come well after the speech ended on a busy machine)
            ended = self.speech_end_at if self.speech_end_at >= self.utterance_started_at else now
            removed = echo.removed_db(now - self.utterance_started_at, now - ended)
        if not self._is_echo(text, agent_words) and likeness < ECHO_LIKENESS and removed < ECHO_REMOVED_DB:
            log.info("barge-in %r: not the agent's words (%.2f of them in %r), sound %.2f like its echo, %.1f dB "
                     "removed", text, echo_match(text, agent_words), agent_words, likeness, removed)
            return False
        log.info("barge-in %r rejected as echo (%.2f of the agent's words, sound %.2f like its echo, %.1f dB removed)",
                 text, echo_match(text, agent_words), likeness, removed)
        self._barge_pending = None
        self._backchannel_utterances.add(self.utterance_id)
        self.s.speech.resume()
        self._count_echo()
        return True

    def _count_echo(self) -> None:
        self.echo_seen = True
        self.echo_rejected += 1
        telemetry.ECHO_REJECTIONS.inc()

    def echo_record(self, record: agent_pb2.TurnLatency) -> None:
        """The echo guard's work since the previous turn record goes into this one."""
        echo = self.s.caller_edge.echo
        if echo is not None:
            seconds, attenuation = echo.take_stats()
            record.echo_cancelled_s = seconds
            if attenuation is not None:
                record.echo_attenuation_db = attenuation
            delay_ms, gated_s = echo.take_alignment()
            record.echo_gated_s = gated_s
            if delay_ms is not None:
                record.echo_delay_ms = delay_ms
        record.interruptions_rejected_as_echo = self.echo_rejected
        self.echo_rejected = 0

    def _on_partial(self, tr: stt_pb2.Transcript) -> None:
        if tr.utterance_id != self.utterance_id:
            return
        if tr.speculative:
            self._on_preview(tr)
            return
        self.utterance_text = tr.text
        if self._barge_pending == tr.utterance_id:
            log.debug("over the agent, utterance %d: %r", tr.utterance_id, tr.text)
            if (len(words(tr.text)) >= self.min_interruption_words and not is_backchannel(tr.text)
                    and not self._rejected_as_echo(tr.text)):
                self._confirm_barge_in()
            return
        if (self.s.turn is None and tr.committed_text
                and len(tr.committed_text) <= self.s.limits.max_transcript_chars):
            self.s.answer.prewarm(tr.committed_text)

    def _on_preview(self, tr: stt_pb2.Transcript) -> None:
        """The caller fell silent and STT previews the final: prepare the answer, hold its audio."""
        if (not self.s.answer.speculates or self.s.turn is not None or self._barge_pending == tr.utterance_id
                or tr.utterance_id in self._backchannel_utterances or not tr.text.strip()
                or len(tr.text) > self.s.limits.max_transcript_chars):
            return
        self.s.language.heard(tr)
        self.s.answer.start_turn(tr.text.strip(), speech_end_at=0.0, endpoint_at=0.0, final_at=0.0,
                                 speculative_utterance=tr.utterance_id)

    def _on_speech_resumed(self, ev: stt_pb2.SpeechEvent) -> None:
        turn = self.s.turn
        if turn is not None and turn.speculative and turn.utterance_id == ev.utterance_id:
            self.s.answer.void_speculation(turn)

    def _confirm_barge_in(self) -> None:
        self._barge_pending = None
        self.s.interrupt("caller spoke over the agent", reaction_from=self.utterance_started_at)
        self.s.sm.to(State.USER_SPEAKING, "caller speaking")
        self.s.event(TE.KIND_USER_STARTED_SPEAKING)

    def _on_speech_ended(self, ev: stt_pb2.SpeechEvent) -> None:
        if ev.utterance_id != self.utterance_id:
            return
        self.endpoint_at = time.monotonic()
        self.speech_end_at = self._arrival_of(ev.audio_offset_ms)
        if self._barge_pending == ev.utterance_id:
            # Too short to be an interruption: a backchannel or a noise while the agent talks.
            self._barge_pending = None
            self._backchannel_utterances.add(ev.utterance_id)
            self.s.speech.resume()
            return
        if ev.utterance_id in self._backchannel_utterances:
            return
        self.s.event(TE.KIND_USER_STOPPED_SPEAKING)

    def _on_final(self, tr: stt_pb2.Transcript) -> None:
        s = self.s
        if tr.utterance_id in self._backchannel_utterances:
            self._backchannel_utterances.discard(tr.utterance_id)
            return
        if self._barge_pending == tr.utterance_id:  # final before the check fired: decide on its words now
            self._barge_pending = None
            if len(words(tr.text)) < self.min_interruption_words or is_backchannel(tr.text):
                s.speech.resume()
                return
            if self._rejected_as_echo(tr.text):
                return
            s.interrupt("caller spoke over the agent", reaction_from=self.utterance_started_at)
        text = tr.text.strip()
        if tr.utterance_id in self._echo_suspects:
            self._echo_suspects.discard(tr.utterance_id)
            if s.turn is None and text and self._is_echo(text, s.speech.last_spoken[1]):
                self._count_echo()  # the tail of the agent's last words, heard again: not a turn
                text = ""
        now = time.monotonic()
        endpoint_at = self.endpoint_at if self.endpoint_at and self.endpoint_at <= now else now
        speech_end_at = self.speech_end_at if self.speech_end_at else endpoint_at
        self.endpoint_at = self.speech_end_at = 0.0
        turn = s.turn
        missed_lead: float | None = None  # the final said other words than the preview an answer was prepared on
        if turn is not None and turn.speculative and turn.utterance_id == tr.utterance_id:
            if same_words(text, turn.user_text):
                turn.endpoint = tr
                s.answer.confirm_speculation(turn, speech_end_at, endpoint_at, now, final_text=text)
                return
            missed_lead = max(0.0, now - turn.prepared_at)
            s.answer.void_speculation(turn, outcome="missed")
        if text and s.refused("transcript", text, s.limits.max_transcript_chars):
            text = ""
        if not text:
            if s.sm.is_(State.USER_SPEAKING):
                s.sm.to(State.LISTENING, "no words")
            s.maybe_finish()
            return
        s.language.heard(tr)
        s.answer.start_turn(text, speech_end_at=speech_end_at, endpoint_at=endpoint_at, final_at=now)
        if s.turn is not None:
            s.turn.endpoint = tr
            if missed_lead is not None:
                s.turn.speculation = agent_pb2.SPECULATION_OUTCOME_MISS
                s.turn.speculation_lead_s = missed_lead
