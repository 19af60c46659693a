"""What one agent turn is made of (its text, its TTS segments, its timestamps) and its latency record.

Plain data shared by the session's collaborators: turn taking creates turns, the answer fills their
text, speech out numbers their segments and stamps first audio, and `latency` turns the stamps into
the `TurnLatency` a caller receives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voxgrid.orchestrator import telemetry

from voxgrid.v1 import agent_pb2, audio_pb2, llm_pb2, stt_pb2


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
    interruptible: bool = True  # False: caller speech does not cut it (a `say` with interruptible=false)
    speculative: bool = False  # prepared from STT's preview; its audio waits for the endpoint
    utterance_id: int = 0  # the caller utterance it answers
    history_snapshot: tuple[int, str | None] = (0, None)  # to undo a voided speculative turn
    held_done: llm_pb2.GenerationDone | None = None  # tool calls wait for the endpoint
    prepared_at: float = 0.0  # speculative: when it started from STT's preview
    unshown_text: str = ""  # speculative: answer text not sent to the caller until the final confirms it
    speculation: int = 0  # agent_pb2.SpeculationOutcome: how a preview of its utterance fared (0: none)
    speculation_lead_s: float = 0.0  # HIT/MISS: the preview came this long before the final
    endpoint: stt_pb2.Transcript | None = None  # STT's final it answers: how its end of turn was decided
    language: agent_pb2.LanguageChoice | None = None  # detected and answer language (language.py)
    mode: int = agent_pb2.AGENT_MODE_PIPELINE  # hybrid: answered from the caller's audio
    llm_audio_ms: float = 0.0  # hybrid: the caller's audio sent to the LLM
    transcript_at: float = 0.0  # hybrid: when STT's final arrived (off the critical path)
    tts_chars: int = 0  # how much of `text` has gone to TTS (the rest is an unfinished word held back)
    first_phrase: str = ""  # first audio by time: "" not begun, "open" (whole words only), "done"
    first_phrase_due: bool = False  # its time limit passed: the next whole word goes out at once

    @property
    def answer_segment(self) -> Segment | None:
        for seg in reversed(self.segments):
            if seg.base_chars >= 0 and not seg.flushed:
                return seg
        return None


def latency(turn: Turn, first_ready_at: float) -> agent_pb2.TurnLatency:
    """The turn's voice-to-voice time split by stage (exported to metrics too).

    `first_ready_at` is when the turn's first audio was ready to go out (a speculative turn's audio
    waits for the endpoint: its overhead is counted from the release, not from the caller's silence).
    """
    ms = 1000.0
    v2v = (turn.first_audio_at - turn.speech_end_at) * ms
    endpoint_wait = max(0.0, turn.endpoint_at - turn.speech_end_at) * ms
    stt = max(0.0, turn.final_at - turn.endpoint_at) * ms
    ttft = max(0.0, turn.first_token_at - turn.generate_sent_at) * ms if turn.first_token_at else 0.0
    ttfa = max(0.0, turn.first_audio_at - turn.first_tts_text_at) * ms if turn.first_tts_text_at else 0.0
    tool = turn.tool_s * ms
    speculative = turn.generate_sent_at < turn.final_at
    if speculative:  # the stages overlapped the endpoint wait: overhead is release -> audio out
        ready = max(turn.final_at, first_ready_at or turn.final_at)
        overhead = max(0.0, turn.first_audio_at - ready) * ms
    else:
        overhead = v2v - endpoint_wait - stt - ttft - ttfa - tool
    record = agent_pb2.TurnLatency(
        turn_id=turn.turn_id, voice_to_voice_ms=v2v, endpoint_wait_ms=endpoint_wait, stt_finalization_ms=stt,
        llm_time_to_first_token_ms=ttft, tts_time_to_first_audio_ms=ttfa, tool_ms=tool,
        orchestration_overhead_ms=overhead, speculative=speculative)
    record.mode = turn.mode
    if turn.speculation:
        record.speculation = turn.speculation
        record.speculation_lead_ms = turn.speculation_lead_s * ms
    record.critical_path.extend(critical_path(turn, endpoint_wait, stt, tool, speculative, first_ready_at))
    if turn.llm_audio_ms:
        record.llm_audio_s = turn.llm_audio_ms / ms
    if turn.transcript_at:
        record.transcript_ms = max(0.0, turn.transcript_at - turn.endpoint_at) * ms
    if turn.language is not None:
        record.language_choice.CopyFrom(turn.language)
    if turn.endpoint is not None:
        record.endpoint_mode = turn.endpoint.endpoint_mode
        record.end_of_turn_reason = turn.endpoint.end_of_turn_reason
        if turn.endpoint.HasField("end_of_turn_probability"):
            record.end_of_turn_probability = turn.endpoint.end_of_turn_probability
    telemetry.observe(record)
    return record


def critical_path(turn: Turn, endpoint_wait_ms: float, stt_ms: float, tool_ms: float, speculative: bool,
                  first_ready_at: float) -> list[int]:
    """The stages the caller waited for, in order. Hybrid has no STT finalisation (the LLM starts at the
    endpoint, from audio); a speculative pipeline turn waited on LLM and TTS only if its audio was not ready
    when the final released it."""
    path = [agent_pb2.TURN_STAGE_ENDPOINT] if endpoint_wait_ms > 0 else []
    if turn.mode != agent_pb2.AGENT_MODE_HYBRID and stt_ms > 0:
        path.append(agent_pb2.TURN_STAGE_STT_FINALIZATION)
    if speculative and (not first_ready_at or first_ready_at <= turn.final_at):
        return path
    path.append(agent_pb2.TURN_STAGE_LLM)
    if tool_ms > 0:
        path.append(agent_pb2.TURN_STAGE_TOOLS)
    path.append(agent_pb2.TURN_STAGE_TTS)
    return path


def cut_at_word(text: str, chars: int) -> str:
    """The heard prefix, ending on a whole word (a half-heard word was not understood)."""
    if chars >= len(text):
        return text.strip()
    cut = text[:chars]
    if chars < len(text) and not text[chars].isspace() and " " in cut:
        cut = cut[: cut.rfind(" ")]
    elif " " not in cut and chars < len(text) and not text[chars].isspace():
        cut = ""
    return cut.strip()
