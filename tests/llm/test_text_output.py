"""Incremental detokenisation and stop strings (transformers engine output path)."""

from __future__ import annotations

from typing import Any

from voxgrid.services.llm.engines.text_output import IncrementalDetokenizer, StopStringMatcher


def test_incremental_detokenizer_reproduces_text_with_multibyte_characters(tiny_tokenizer: Any) -> None:
    text = "Paris — naïve café 北京 🚀 done."
    ids = tiny_tokenizer(text, add_special_tokens=False).input_ids
    detok = IncrementalDetokenizer(tiny_tokenizer)
    pieces = [detok.push(i) for i in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_stop_string_cuts_before_the_stop_even_when_split_across_deltas() -> None:
    matcher = StopStringMatcher(["\nUser:"])
    out = "".join(matcher.feed(p) for p in ["Hello", " there\nUs", "er: more"])
    assert out == "Hello there" and matcher.stopped
    assert matcher.feed("ignored") == ""


def test_held_back_prefix_is_released_when_it_does_not_become_a_stop() -> None:
    matcher = StopStringMatcher(["END"])
    assert matcher.feed("the EN") == "the "
    assert matcher.feed("D") == "" and matcher.stopped
    other = StopStringMatcher(["END"])
    assert other.feed("EN") == "" and other.feed("ough") == "ENough" and other.flush() == ""
    assert StopStringMatcher([]).feed("x") == "x"
