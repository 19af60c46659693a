"""Decides when streamed text is safe to speak, and cuts it into the pieces the engine synthesises.

Text arrives as an LLM writes it, split anywhere (even mid-word or mid-number: "$12." then "50").
Speaking too early mangles words and numbers; speaking too late costs time to first audio. The rules:

* A boundary is confirmed only by the character after it: "." then whitespace ends a clause, "." then
  a digit ("12.50"), a letter ("e.g") or nothing yet (the next delta may still bring "50") does not.
  Clause punctuation: , ; : . ! ? and the dash —; a newline is always a boundary (markdown lines).
  Abbreviations ("Dr.", "e.g.", initials) and list numbers ("1.") are not boundaries.
* The first chunk of an utterance goes at its first clause boundary, or at the last word boundary once
  `first_chunk_max_chars` characters are pending: first audio fast.
* Later chunks go at sentence ends (. ! ? newline), or at a clause boundary once `clause_min_chars` are
  pending, or at a word boundary past `max_chunk_chars`: sentence-sized pieces give better prosody,
  and the engine stays ahead of the listener.

Spans index the utterance's original text (code points from its first character), so marks built on
them say exactly which input characters each piece of audio speaks. Only the unconsumed tail of the
text is kept, so memory follows what is pending, not the whole utterance.
"""

from __future__ import annotations

from dataclasses import dataclass

CLAUSE_PUNCT = frozenset(",;:.!?")
SENTENCE_PUNCT = frozenset(".!?")
DASHES = frozenset("—–")
CLOSERS = frozenset("\"')]}”’»*_`")
ABBREVIATIONS = frozenset(
    "dr mr mrs ms prof jr sr st ave vs e.g i.e etc approx no mt ft fig inc ltd co corp dept est gen gov "
    "lt col sgt capt rev hon u.s a.m p.m".split()
)


@dataclass(frozen=True)
class TextSpan:
    """Characters [start, end) of the utterance text, and that text."""

    start: int
    end: int
    text: str


class TextChunker:
    """Accumulates one utterance's text deltas and hands out spans that are safe to speak."""

    def __init__(self, first_chunk_max_chars: int = 60, clause_min_chars: int = 100, max_chunk_chars: int = 300):
        if first_chunk_max_chars < 1 or max_chunk_chars < first_chunk_max_chars:
            raise ValueError("need 1 <= first_chunk_max_chars <= max_chunk_chars")
        self.first_chunk_max_chars = first_chunk_max_chars
        self.clause_min_chars = clause_min_chars
        self.max_chunk_chars = max_chunk_chars
        self._buf = ""  # unconsumed text; self._buf[self._pos:] is pending
        self._pos = 0
        self._base = 0  # utterance offset of self._buf[0]
        self.received_chars = 0
        self.spans_out = 0

    @property
    def pending_chars(self) -> int:
        return len(self._buf) - self._pos

    def feed(self, delta: str) -> None:
        self._buf += delta
        self.received_chars += len(delta)

    def next_span(self, final: bool = False) -> TextSpan | None:
        """The next piece that is safe to speak now, or None. `final`: the utterance is complete."""
        while self._pos < len(self._buf) and self._buf[self._pos].isspace():
            self._pos += 1  # leading whitespace belongs to no span
        if self._pos >= len(self._buf):
            return None
        cut = self._find_cut()
        if cut is None and final:
            cut = len(self._buf)
        if cut is None:
            return None
        start, text = self._base + self._pos, self._buf[self._pos : cut]
        stripped = text.rstrip()
        span = TextSpan(start, start + len(stripped), stripped)
        self._pos = cut
        if self._pos > 4096 and self._pos * 2 > len(self._buf):  # compact: keep memory ~ pending text
            self._buf, self._base, self._pos = self._buf[self._pos :], self._base + self._pos, 0
        self.spans_out += 1
        return span

    def _find_cut(self) -> int | None:
        """Index in self._buf where the next span ends (exclusive), per the rules in the module doc."""
        first = self.spans_out == 0
        limit = self.first_chunk_max_chars if first else self.max_chunk_chars
        buf, start = self._buf, self._pos
        end = min(len(buf), start + max(limit, self.clause_min_chars) + 64)
        last_space: int | None = None
        last_clause: int | None = None
        for i in range(start, end):
            ch = buf[i]
            length = i - start
            if ch.isspace():
                if length >= limit and last_space is not None:
                    return last_space
                if ch == "\n" and length > 0:
                    return i
                last_space = i
                continue
            boundary = self._boundary_after(i)
            if boundary is None:
                continue
            is_sentence = ch in SENTENCE_PUNCT
            if first or is_sentence or length + 1 >= self.clause_min_chars:
                return boundary
            last_clause = boundary
        if len(buf) - start >= limit:
            # Nothing good within the limit: cut at a clause, else a word, else (one huge word) hard.
            if last_clause is not None:
                return last_clause
            if last_space is not None:
                return last_space
            return start + limit
        return None

    def _boundary_after(self, i: int) -> int | None:
        """If buf[i] ends a clause and the following text confirms it, the cut index; else None."""
        buf = self._buf
        ch = buf[i]
        if ch in DASHES:
            return i + 1
        if ch not in CLAUSE_PUNCT:
            return None
        j = i + 1
        while j < len(buf) and buf[j] in CLOSERS:
            j += 1
        if j >= len(buf) or not buf[j].isspace():
            return None  # unconfirmed ("12." + "50"?) or inside a token ("3:30", "1,000", "e.g")
        if ch == "." and self._is_abbreviation(i):
            return None
        return j

    def _is_abbreviation(self, dot: int) -> bool:
        k = dot
        while k > self._pos and not self._buf[k - 1].isspace():
            k -= 1
        word = self._buf[k:dot].lower().lstrip("(\"'")
        if word in ABBREVIATIONS:
            return True
        if len(word) == 1 and word.isalpha() and self._buf[k].isupper():
            return True  # an initial: "J. R. R. Tolkien"
        line_start = k == self._pos or self._buf[k - 1] == "\n"
        return word.isdigit() and len(word) <= 3 and line_start  # a list number: "1. First"
