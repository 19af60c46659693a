"""Mark bookkeeping: which characters of an utterance each piece of audio speaks, and how far audio got.

The orchestrator trims the assistant's history to what the listener heard, so this ledger records, per
span, where its audio starts in the utterance, how much of it was produced and how much was sent.
`spoken_chars` is the end of the last span sent in full, plus, for a span cut off part-way, the share
of its characters its sent audio covers, rounded back to a word boundary (clause-level alignment:
the engines give no word timings).
"""

from __future__ import annotations

from dataclasses import dataclass

from voxgrid.services.tts.chunker import TextSpan


@dataclass(frozen=True)
class Mark:
    """A span with its place in the utterance's audio (SpeechMark on the wire)."""

    text_start: int
    text_end: int
    text: str
    audio_offset_ms: int
    audio_duration_ms: int


@dataclass
class _SpanAudio:
    span: TextSpan
    offset_ms: float | None = None  # set when its first audio is sent
    produced_ms: float = 0.0
    sent_ms: float = 0.0
    finished: bool = False  # the engine is done with it (all produced)


class MarkLedger:
    """Spans of one utterance in speaking order and the audio each has produced and sent."""

    def __init__(self) -> None:
        self._spans: list[_SpanAudio] = []
        self._fully_sent = 0  # spans [0, _fully_sent) are finished and sent in full

    def add(self, span: TextSpan) -> int:
        self._spans.append(_SpanAudio(span))
        return len(self._spans) - 1

    def produced(self, index: int, ms: float) -> None:
        self._spans[index].produced_ms += ms

    def finished(self, index: int) -> None:
        self._spans[index].finished = True
        self._advance()

    def sent(self, index: int, ms: float, utterance_offset_ms: float) -> Mark:
        """Record `ms` of span audio sent at `utterance_offset_ms`; returns the chunk's mark."""
        s = self._spans[index]
        if s.offset_ms is None:
            s.offset_ms = utterance_offset_ms
        s.sent_ms += ms
        self._advance()
        return Mark(s.span.start, s.span.end, s.span.text, round(s.offset_ms), round(s.produced_ms))

    def _advance(self) -> None:
        while self._fully_sent < len(self._spans):
            s = self._spans[self._fully_sent]
            if not (s.finished and s.sent_ms >= s.produced_ms - 1e-6):
                break
            self._fully_sent += 1

    def spoken_chars(self) -> int:
        """Characters of the utterance the sent audio covers (see the module doc)."""
        done = self._spans[self._fully_sent - 1].span.end if self._fully_sent else 0
        if self._fully_sent < len(self._spans):
            s = self._spans[self._fully_sent]
            if s.sent_ms > 0 and s.produced_ms > 0:
                share = min(1.0, s.sent_ms / s.produced_ms)
                cut = int(share * len(s.span.text))
                while cut > 0 and not s.span.text[cut - 1].isspace() and cut < len(s.span.text):
                    cut -= 1
                done = max(done, s.span.start + len(s.span.text[:cut].rstrip()))
        return done
