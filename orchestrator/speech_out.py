"""Speech out: the turn's text to TTS in segments, TTS audio to the paced playout, and what was heard.

It owns the session's `Playout` and the TTS side of a turn: which TTS utterance belongs to which
segment, when the first audio went out (the turn's latency record), when everything was sent and
played (the turn is then finished by the session), what to drop after a cancel, and what to speak
again when a TTS replica was lost. Anything that should be spoken goes through `speak` (streamed
text of an answer round), `say` (a whole text at once, e.g. the greeting) or `filler`.

First audio by time: a CPU LLM may write the first few words slower than the caller should wait, and
the TTS server speaks an utterance's first chunk only at a clause or after enough characters. So the
first phrase is cut here: while it is open TTS gets whole words only (an unfinished word is held back),
and it is flushed as an utterance of its own once it has `first_audio_min_words` whole words and either
`first_audio_after_ms` have passed since the first token or the next word would take it past
`first_phrase_chars` (the old character rule, now applied here). The rest of the answer is the next
utterance, which TTS chunks at clauses (the session then asks TTS for its default first chunk, so the
rest is not cut short again); its segment starts where the first ended, so marks and the heard text
stay exact. If TTS cut a first chunk by itself (a clause came first), the phrase is over.
Measured (benchmarks/bench_peer.py --naturalness): two-word first phrases ("Paris is") were misheard
by whisper every time ("Parishes"), three words were not; hence the minimum of three.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from voxgrid.orchestrator.playout import Chunk, Playout
from voxgrid.orchestrator.state import State
from voxgrid.orchestrator.turns import Segment, Turn, cut_at_word, latency

from voxgrid.v1 import agent_pb2, audio_pb2, tts_pb2

if TYPE_CHECKING:
    from voxgrid.orchestrator.session import PipelineSession

TE = agent_pb2.TurnEvent
_FLUSH = tts_pb2.SynthesizeRequest(control=tts_pb2.TtsControl(action=tts_pb2.TtsControl.ACTION_FLUSH))
_CANCEL = tts_pb2.SynthesizeRequest(control=tts_pb2.TtsControl(action=tts_pb2.TtsControl.ACTION_CANCEL))


class SpeechOut:
    """TTS segments, paced playout and heard text of the session's current turn."""

    def __init__(self, session: PipelineSession, playout_lead_ms: int, first_audio_after_ms: int = 0,
                 first_audio_min_words: int = 3, first_phrase_chars: int = 16) -> None:
        self.s = session
        self.first_audio_after_s = first_audio_after_ms / 1000  # 0: first audio by characters only (TTS)
        self.first_audio_min_words = first_audio_min_words
        self.first_phrase_chars = first_phrase_chars
        self.playout = Playout(self._send_audio, playout_lead_ms, self._on_first_audio, self._on_sent_all)
        self.last_spoken: tuple[float, str] = (0.0, "")  # when the last turn's audio ended, and its last words
        # After a cancel, TTS audio still in transit belongs to the cancelled utterances: it is dropped
        # until the server confirms the cancel with a `done` (cancelled).
        self.tts_draining = False

    def handlers(self) -> dict[str, Callable[[Any], None]]:
        return {"tts": self._on_tts, "played_all": self._on_played_all, "filler": self._on_filler,
                "first_phrase_due": self._on_first_phrase_due}

    # --- what the collaborators ask for -------------------------------------------------------------

    def start_turn(self, turn_id: int, held: bool = False) -> None:
        """A new turn's audio starts; `held` audio (a speculative turn's) waits for `release`."""
        self.playout.start_turn(turn_id, held=held)

    def speak(self, turn: Turn, text: str) -> None:
        """Streamed answer text: shown to the caller, added to the turn's text and sent to TTS."""
        if not turn.first_tts_text_at:
            turn.first_tts_text_at = time.monotonic()
            if self.first_audio_after_s and not turn.first_phrase:
                turn.first_phrase = "open"
                self.s.later(self.first_audio_after_s, "first_phrase_due", turn.turn_id)
        turn.text += text
        if turn.speculative:  # shown once the final confirms it (`show_held_text`): a voided one leaves no trace
            turn.unshown_text += text
        else:
            self.s.emit(agent_pb2.ConverseResponse(agent_text=agent_pb2.AgentText(turn_id=turn.turn_id, text=text)))
        self._send_text(turn)

    def show_held_text(self, turn: Turn) -> None:
        """A speculative turn was confirmed: the caller sees the text written so far, at once."""
        if turn.unshown_text:
            text, turn.unshown_text = turn.unshown_text, ""
            self.s.emit(agent_pb2.ConverseResponse(agent_text=agent_pb2.AgentText(turn_id=turn.turn_id, text=text)))

    def flush(self, turn: Turn) -> None:
        """The answer round's text is complete: TTS speaks its tail now."""
        if turn.first_phrase == "open":
            turn.first_phrase = "done"
            self._send_text(turn)  # the held-back last word is whole now
        seg = turn.answer_segment
        if seg is not None:
            seg.flushed = True
            self.s.links.send("tts", _FLUSH)

    def _send_text(self, turn: Turn) -> None:
        """Send TTS the turn's text not sent yet; while the first phrase is open, whole words only, word
        by word, so the phrase can be cut between any two of them."""
        while turn.first_phrase == "open":
            start = turn.tts_chars
            while start < len(turn.text) and turn.text[start].isspace():
                start += 1
            end = next((i + 1 for i in range(start, len(turn.text)) if turn.text[i].isspace()), 0)
            if not end:
                break  # an unfinished word (or nothing): held back
            seg = turn.answer_segment
            phrase = turn.text[seg.base_chars:turn.tts_chars] if seg is not None else ""
            if self._phrase_ready(phrase, turn.text[turn.tts_chars:end]):
                self._cut_first_phrase(turn)
                break
            self._send(turn, end)
        if turn.first_phrase != "open":
            self._send(turn, len(turn.text))
        elif turn.first_phrase_due:
            seg = turn.answer_segment
            if seg is not None and self._phrase_ready(turn.text[seg.base_chars:turn.tts_chars], None):
                self._cut_first_phrase(turn)
                self._send(turn, len(turn.text))

    def _phrase_ready(self, phrase: str, next_word: str | None) -> bool:
        """The first phrase is complete: enough words, and its time is up or the next word would make
        it longer than the character rule allows (`next_word` None: only the time counts)."""
        if len(phrase.split()) < self.first_audio_min_words:
            return False
        return next_word is None or len((phrase + next_word).strip()) > self.first_phrase_chars

    def _send(self, turn: Turn, end: int) -> None:
        if end <= turn.tts_chars:
            return
        if turn.answer_segment is None:
            turn.segments.append(Segment(turn.tts_chars))
        self.s.links.send("tts", tts_pb2.SynthesizeRequest(text=turn.text[turn.tts_chars:end]))
        turn.tts_chars = end

    def _cut_first_phrase(self, turn: Turn) -> None:
        """The whole words sent so far are the first utterance, spoken now; the rest opens the next one."""
        seg = turn.answer_segment
        turn.first_phrase = "done"
        if seg is not None:
            seg.flushed = True
            self.s.links.send("tts", _FLUSH)

    def _on_first_phrase_due(self, turn_id: int) -> None:
        turn = self.s.turn
        if turn is None or turn.turn_id != turn_id or turn.cancelled or turn.first_phrase != "open":
            return
        turn.first_phrase_due = True
        self._send_text(turn)

    def say(self, turn: Turn, text: str) -> None:
        """Speak a whole text as the turn's answer (the greeting; live control's `say` will too)."""
        turn.text = text
        turn.tts_chars = len(text)
        turn.first_tts_text_at = time.monotonic()
        self.playout.start_turn(turn.turn_id)
        turn.segments.append(Segment(0, flushed=True))
        self.s.links.send("tts", tts_pb2.SynthesizeRequest(text=text))
        self.s.links.send("tts", _FLUSH)

    def pause(self) -> None:
        """The caller may be cutting in: stop sending (the client's short buffer keeps playing)."""
        self.playout.pause()

    def resume(self) -> None:
        self.playout.resume()

    def release(self) -> None:
        """A speculative turn was confirmed: its held audio may go out."""
        self.playout.release()

    @property
    def paused(self) -> bool:
        return bool(self.playout.paused_at)

    def client_played(self, turn_id: int, played_ms: float) -> None:
        """The client's playback mark: what the caller has really heard of the turn."""
        turn = self.s.turn
        if turn and turn_id == turn.turn_id:
            self.playout.client_played_ms = played_ms
            if self.s.caller_edge.echo is not None:
                self.s.caller_edge.echo.mark(turn_id, played_ms)

    def _send_audio(self, response: agent_pb2.ConverseResponse) -> None:
        """Out to the client; the echo canceller (if on) gets the same audio as its reference."""
        self.s.emit(response)
        echo = self.s.caller_edge.echo
        if echo is not None and response.HasField("agent_audio"):
            echo.far(response.agent_audio.data, response.agent_audio.turn_id)

    def text_playing(self, from_ms: float, to_ms: float) -> str:
        """The current turn's words played between `from_ms` and `to_ms` of its audio (whole words; the
        self-echo check compares the caller's words with them)."""
        turn = self.s.turn
        if turn is None:
            return ""
        start = self.playout.heard_chars(max(0.0, from_ms))
        end = max(self.playout.heard_chars(to_ms), start)
        start = turn.text.rfind(" ", 0, start) + 1
        stop = turn.text.find(" ", end)
        return turn.text[start: len(turn.text) if stop < 0 else stop]

    def stop(self, turn: Turn) -> str:
        """Stop the turn's speech at once (TTS cancelled, nothing more sent); returns what was heard."""
        if any(not s.done for s in turn.segments):
            self.tts_draining = True
            self.s.links.send("tts", _CANCEL)
        heard_chars = self.playout.heard_chars(self.playout.played_ms())
        self.playout.clear()
        if self.s.caller_edge.echo is not None:
            self.s.caller_edge.echo.cut()
        return cut_at_word(turn.text, heard_chars)

    def maybe_turn_complete(self, turn: Turn) -> None:
        """When the answer is written and all its speech made, the turn ends once it has been played."""
        if turn.speculative:
            return  # decided at the endpoint (Answer.confirm_speculation)
        if turn.llm_done and all(s.done for s in turn.segments):
            if not self.playout.sent and not self.playout.turn_audio_ms:
                self.s.finish_turn(turn, heard=turn.text)  # nothing to say (or nothing speakable)
            else:
                self.playout.complete()

    def tts_relinked(self, turn: Turn) -> None:
        """A new TTS replica speaks what the lost one had not sent yet."""
        spoken = self.playout.heard_chars(self.playout.sent_ms) if self.playout.sent else 0
        rest = turn.text[spoken:]
        for seg in turn.segments:
            seg.done = seg.flushed = True
            seg.utterance_id = -1  # retired: the new stream numbers its utterances from 1 again
        self.tts_draining = False  # a new stream: nothing of the old one will arrive
        turn.tts_chars = len(turn.text)
        if turn.first_phrase == "open":
            turn.first_phrase = "done"
        if rest.strip():
            turn.segments.append(Segment(spoken, flushed=turn.llm_done))
            self.s.links.send("tts", tts_pb2.SynthesizeRequest(text=rest))
            if turn.llm_done:
                self.s.links.send("tts", _FLUSH)
        else:
            self.maybe_turn_complete(turn)

    async def close(self) -> None:
        await self.playout.close()

    # --- events -------------------------------------------------------------------------------

    def _on_filler(self, payload: tuple[int, str]) -> None:
        """A slow tool: say something while it runs (only before any of the answer was heard)."""
        turn_id, text = payload
        turn = self.s.turn
        if turn is None or turn.turn_id != turn_id or not self.s.sm.is_(State.CALLING_TOOL) or turn.first_audio_at:
            return
        turn.segments.append(Segment(-1, flushed=True))
        if not turn.first_tts_text_at:
            turn.first_tts_text_at = time.monotonic()
        self.s.links.send("tts", tts_pb2.SynthesizeRequest(text=text))
        self.s.links.send("tts", _FLUSH)

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
        turn = self.s.turn
        if turn is None or turn.cancelled:
            return
        if which == "audio":
            a = response.audio
            seg = self._segment_for(turn, a.utterance_id)
            if seg is None:
                return
            if turn.first_phrase == "open" and seg.base_chars >= 0:
                # TTS cut a first chunk by itself (a clause, or enough characters): nothing to force.
                turn.first_phrase = "done"
                self._send_text(turn)
            self._enqueue(turn, seg, a.utterance_id, a.data, a.mark, float(a.audio_offset_ms))
        elif which == "done":
            seg = self._segment_for(turn, response.done.utterance_id)
            if seg is not None:
                self._enqueue(turn, seg, response.done.utterance_id, b"", audio_pb2.SpeechMark(), 0.0, last=True)
                seg.done = True
            self.maybe_turn_complete(turn)

    def _enqueue(self, turn: Turn, seg: Segment, utterance_id: int, data: bytes, mark: audio_pb2.SpeechMark,
                 offset_ms: float, last: bool = False) -> None:
        """Queue TTS audio for the caller through the agent edge (Opus: 20 ms packets, one per message; the
        chunk's mark rides on its first packet)."""
        for i, (msg, edge_offset) in enumerate(self.s.agent_edge.packets(data, utterance_id, last)):
            self.playout.enqueue(Chunk(turn.turn_id, msg, self.s.agent_edge.message_ms(msg),
                                       mark if i == 0 else audio_pb2.SpeechMark(),
                                       offset_ms if edge_offset < 0 else edge_offset, seg.base_chars,
                                       arrived_at=self.s.cause[1]))

    def _on_first_audio(self, turn_id: int) -> None:
        """Called by the playout as the turn's first chunk goes out: the agent is speaking."""
        turn = self.s.turn
        if turn is None or turn.turn_id != turn_id:
            return
        turn.first_audio_at = time.monotonic()
        if self.s.sm.is_(State.THINKING, State.CALLING_TOOL, State.LISTENING):
            self.s.sm.to(State.AGENT_SPEAKING, "first audio out")
        self.s.event(TE.KIND_AGENT_STARTED_SPEAKING, turn.turn_id)
        if turn.user_text or turn.llm_audio_ms:  # a greeting has no caller speech to measure from
            record = latency(turn, self.playout.first_ready_at)
            self.s.turn_taking.echo_record(record)
            self.s.emit(agent_pb2.ConverseResponse(latency=record))

    def _on_sent_all(self, turn_id: int) -> None:
        # All audio is out; the turn ends when the caller has had time to hear it (barge-in still trims).
        self.s.later(self.playout.remaining_playback_s(), "played_all", turn_id)

    def _on_played_all(self, turn_id: int) -> None:
        turn = self.s.turn
        if turn is None or turn.turn_id != turn_id or turn.cancelled:
            return
        self.last_spoken = (time.monotonic(), " ".join(turn.text.split()[-12:]))
        self.s.finish_turn(turn, heard=turn.text)
