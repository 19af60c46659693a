"""Hybrid mode: STT decides the turn, a speech-in LLM hears the caller's audio, TTS speaks the answer.

Turn taking is STT's, unchanged: its VAD and endpointer (fixed silence or the semantic turn model)
send `speech_started` / `speech_ended` with offsets on the STT stream. We chose STT in that role over a
second VAD in the orchestrator because one turn-taking implementation then serves both modes (the
same endpointing config, semantic end of turn, backchannel and barge-in rules, the same offsets), the
orchestrator stays free of model compute, and STT still writes the transcript the client and the
history need. What hybrid changes is what the answer waits for: at `speech_ended` the utterance's
audio (cut from the session's `UtteranceAudio` ring by STT's offsets) goes straight to the LLM as
`ChatMessage.audio`; STT's final transcript arrives in parallel, off the critical path, and is shown to
the client and written into that user turn of the history (older audio turns are sent as their
transcripts: orchestrator/context.py). Speech out, overlap, marks, barge-in and the heard-only history
are the pipeline's own (the session's `SpeechOut` and `interrupt`). Tools run through the same loop.

Not in hybrid mode: speculation on STT's preview and prewarm from partials (both start from text; the
answer here starts at the endpoint, from audio). The persona and history are still prewarmed when the call
starts (`Answer.prewarm_context`): the engine caches the text before the audio.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from voxgrid.orchestrator.answer import Answer
from voxgrid.orchestrator.context import Message
from voxgrid.orchestrator.state import State
from voxgrid.orchestrator.turn_taking import TurnTaking
from voxgrid.orchestrator.turns import Turn
from voxgrid.orchestrator.utterance_audio import UtteranceAudio, clip_for_model

from voxgrid.audio import AudioSpec
from voxgrid.v1 import agent_pb2, llm_pb2, stt_pb2

if TYPE_CHECKING:
    from voxgrid.orchestrator.session import PipelineSession

# Shorter than this is a click or a breath the VAD let through: nothing for the model to hear.
MIN_UTTERANCE_MS = 100.0


@dataclass(frozen=True)
class HybridSpec:
    """What the session's speech-in LLM takes (its ListModels entry), checked once at session start."""

    model: str
    speech_input: llm_pb2.SpeechInputSpec
    max_audio_ms: float  # the model's limit and the orchestrator's, whichever is smaller


class HybridAnswer(Answer):
    """Answers that start from the caller's audio; text turns (typed input) work as in pipeline mode."""

    @property
    def speculates(self) -> bool:
        return False

    def prewarm(self, partial: str) -> None:
        """No text prefill: the answer's input is audio that does not exist before the endpoint."""

    def start_audio_turn(self, clip: llm_pb2.AudioClip, audio_ms: float, *, speech_end_at: float,
                         endpoint_at: float, endpoint: stt_pb2.Transcript, max_audio_ms: float) -> Message:
        """Answer the caller's audio now; returns the user message whose transcript arrives later."""
        s = self.s
        history = s.conversation.history
        last = history[-1] if history else None
        if (last is not None and last.role == "user" and last.audio is not None
                and last.audio.format == clip.format
                and _clip_ms(last.audio) + audio_ms <= max_audio_ms):
            # The previous utterance got no answer the caller heard (they went on talking): one user turn.
            last.audio.data += clip.data
            message = last
        else:
            message = Message("user", "", audio=clip)
            s.conversation.add(message)
        language = s.language.choose(turn_in_flight=s.turn is not None)  # from the previous utterance's final
        turn = Turn(s.next_turn_id(), "", speech_end_at, endpoint_at, endpoint_at)
        turn.language = language
        turn.mode = agent_pb2.AGENT_MODE_HYBRID
        turn.llm_audio_ms = _clip_ms(message.audio) if message.audio is not None else audio_ms
        turn.endpoint = endpoint
        s.turn = turn
        s.speech.start_turn(turn.turn_id, held=False)
        s.sm.to(State.THINKING, "caller finished (audio to the LLM)")
        self._generate(turn)
        return message


class HybridTurnTaking(TurnTaking):
    """Pipeline turn taking, but the endpoint starts the answer from audio and the final only fills in words."""

    def __init__(self, session: PipelineSession, turn_taking: agent_pb2.TurnTakingConfig, spec: HybridSpec) -> None:
        super().__init__(session, turn_taking)
        self.spec = spec
        self.ring = UtteranceAudio(session.caller_edge.backend_spec, spec.max_audio_ms)
        self._speech_start_ms = 0.0
        self._pending: dict[int, tuple[Message, Turn]] = {}  # utterance -> its user turn, until the final
        self._answered = 0  # the last utterance answered from audio

    def send_to_stt(self, data: bytes) -> None:
        self.ring.append(data)
        super().send_to_stt(data)

    def stt_restarted(self) -> None:
        super().stt_restarted()
        self.ring.restart()

    def _on_speech_started(self, ev: stt_pb2.SpeechEvent) -> None:
        self._speech_start_ms = float(ev.audio_offset_ms)
        super()._on_speech_started(ev)

    def _on_speech_ended(self, ev: stt_pb2.SpeechEvent) -> None:
        answer_it = (ev.utterance_id == self.utterance_id and self._barge_pending != ev.utterance_id
                     and ev.utterance_id not in self._backchannel_utterances)
        super()._on_speech_ended(ev)
        if answer_it:
            self._answer_audio(ev)

    def _answer_audio(self, ev: stt_pb2.SpeechEvent) -> None:
        s = self.s
        data, lost_ms = self.ring.cut(self._speech_start_ms, float(ev.audio_offset_ms), self.spec.max_audio_ms)
        audio_ms = self.ring.spec.duration_ms(len(data))
        if audio_ms < MIN_UTTERANCE_MS:
            if s.sm.is_(State.USER_SPEAKING):
                s.sm.to(State.LISTENING, "no speech to answer")
            return
        if lost_ms > 1.0:
            s.notice(grpc.StatusCode.INVALID_ARGUMENT,
                     f"the utterance was longer than the {self.spec.max_audio_ms / 1000:.0f} s the agent hears in one "
                     f"turn (model {self.spec.model!r} and max_utterance_audio_s): only its last "
                     f"{audio_ms / 1000:.1f} s were answered; pause more often", "input")
        if s.turn is not None:  # a barge-in already confirmed on words: make sure the old answer is gone
            s.interrupt("caller spoke over the agent", reaction_from=self.utterance_started_at)
        clip = clip_for_model(data, self.ring.spec, self.spec.speech_input)
        endpoint = stt_pb2.Transcript(utterance_id=ev.utterance_id, endpoint_mode=ev.endpoint_mode,
                                      end_of_turn_reason=ev.end_of_turn_reason)
        if ev.HasField("end_of_turn_probability"):
            endpoint.end_of_turn_probability = ev.end_of_turn_probability
        assert isinstance(s.answer, HybridAnswer)
        message = s.answer.start_audio_turn(clip, audio_ms, speech_end_at=self.speech_end_at,
                                            endpoint_at=self.endpoint_at, endpoint=endpoint,
                                            max_audio_ms=self.spec.max_audio_ms)
        assert s.turn is not None
        self._pending[ev.utterance_id] = (message, s.turn)
        self._answered = ev.utterance_id
        self.endpoint_at = self.speech_end_at = 0.0

    def _on_final(self, tr: stt_pb2.Transcript) -> None:
        """The words of an utterance already being answered: for the client (sent by `_on_stt`) and the history."""
        if tr.utterance_id in self._backchannel_utterances:
            self._backchannel_utterances.discard(tr.utterance_id)
            return
        if self._barge_pending == tr.utterance_id:
            self._barge_pending = None
        # Echo rejection works on the final's words, which hybrid does not wait for: not applied here.
        self._echo_suspects.discard(tr.utterance_id)
        if (tr.utterance_id == self.utterance_id and tr.utterance_id != self._answered
                and tr.utterance_id not in self._pending and tr.text.strip()):
            # A final with no endpoint before it (the caller's input ended mid-utterance; STT flushed): answer
            # the audio heard up to here.
            now = time.monotonic()
            self.endpoint_at = self.endpoint_at or now
            self.speech_end_at = self.speech_end_at or now
            self._answer_audio(stt_pb2.SpeechEvent(kind=stt_pb2.SpeechEvent.KIND_SPEECH_ENDED,
                                                   utterance_id=tr.utterance_id,
                                                   audio_offset_ms=int(self.ring.spec.duration_ms(self.ring.end))))
        pending = self._pending.pop(tr.utterance_id, None)
        if pending is not None:
            message, turn = pending
            turn.transcript_at = time.monotonic()
            text = tr.text.strip()[: self.s.limits.max_transcript_chars]
            if text:
                self.s.language.heard(tr)  # the next audio turn answers in the language detected here
                message.content = f"{message.content} {text}".strip()
        self.s.maybe_finish()


def _clip_ms(clip: llm_pb2.AudioClip) -> float:
    return AudioSpec.from_proto(clip.format, what="audio").duration_ms(len(clip.data))
