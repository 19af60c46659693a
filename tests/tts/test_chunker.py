"""The chunker decides when streamed text is safe to speak; spans index the original text."""

from __future__ import annotations

import itertools
import random

from voxgrid.services.tts.chunker import TextChunker, TextSpan

TEXT = (
    "Hello there, Dr. Smith. It costs $12.50 at 3:30 pm, e.g. today! The quick brown fox jumps over the lazy "
    "dog and keeps running far away into the distant forest without ever stopping to rest. "
    "J. R. R. Tolkien wrote books.\n1. First item\n2. Second item — done."
)


def chunk(text: str, pieces: list[str] | None = None, **kw: int) -> list[TextSpan]:
    c = TextChunker(**kw)
    spans: list[TextSpan] = []
    for piece in pieces if pieces is not None else [text]:
        c.feed(piece)
        while (s := c.next_span()) is not None:
            spans.append(s)
    while (s := c.next_span(final=True)) is not None:
        spans.append(s)
    return spans


def random_pieces(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 6)
        out.append(text[i : i + n])
        i += n
    return out


def test_spans_cover_the_text_in_order() -> None:
    spans = chunk(TEXT)
    for s in spans:
        assert TEXT[s.start : s.end] == s.text
    assert "".join(s.text for s in spans).replace(" ", "").replace("\n", "") == TEXT.replace(" ", "").replace("\n", "")
    assert all(a.end <= b.start for a, b in itertools.pairwise(spans))


def test_split_anywhere_gives_the_same_spans_as_whole_text() -> None:
    whole = chunk(TEXT)
    for seed in range(20):
        assert chunk(TEXT, random_pieces(TEXT, seed)) == whole


def test_no_cut_inside_numbers_times_or_abbreviations() -> None:
    texts = [s.text for s in chunk(TEXT)]
    assert texts[0] == "Hello there,"  # the first clause goes at once
    assert "Dr. Smith." in texts
    assert "It costs $12.50 at 3:30 pm, e.g. today!" in texts
    assert "J. R. R. Tolkien wrote books." in texts


def test_a_boundary_waits_for_the_next_character() -> None:
    c = TextChunker()
    c.feed("It costs $12.")
    assert c.next_span() is None  # "$12." may go on as "$12.50"
    c.feed("50 now, ok")
    assert c.next_span() == TextSpan(0, 20, "It costs $12.50 now,")


def test_first_chunk_goes_at_a_word_boundary_past_the_limit() -> None:
    text = "this clause has no punctuation at all and goes on and on for quite a while longer"
    c = TextChunker(first_chunk_max_chars=30)
    c.feed(text)
    first = c.next_span()
    assert first is not None and len(first.text) <= 30 and text[first.end] == " "


def test_later_chunks_are_sentences() -> None:
    text = "Hi, there. This second part, with a comma, stays one sentence for better prosody. Next."
    assert [s.text for s in chunk(text)] == [
        "Hi,", "there.", "This second part, with a comma, stays one sentence for better prosody.", "Next."
    ]


def test_huge_text_keeps_only_pending_text() -> None:
    c = TextChunker()
    sentence = "This is one sentence of a very long text. "
    c.feed(sentence * 5000)
    last = None
    for _ in range(4000):
        last = c.next_span()
    assert last is not None and last.text == sentence.strip()
    assert len(c._buf) < len(sentence) * 2000  # consumed text was dropped


def test_a_word_longer_than_the_limit_is_cut_hard() -> None:
    spans = chunk("x" * 700, max_chunk_chars=300)
    assert [len(s.text) for s in spans] == [60, 300, 300, 40]
