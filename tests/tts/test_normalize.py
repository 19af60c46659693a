"""The speech normaliser turns what LLMs write into words a voice can say."""

from __future__ import annotations

import pytest
from voxgrid.services.tts import numbers
from voxgrid.services.tts.normalize import normalize_for_speech


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("It costs $12.50.", "It costs twelve dollars and fifty cents."),
        ("$1 only", "one dollar only"),
        ("$0.99", "ninety nine cents"),
        ("$3 million", "three million dollars"),
        ("£20", "twenty pounds"),
        ("Meet at 3:30 pm.", "Meet at three thirty p m."),
        ("At 7am", "At seven a m"),
        ("At 15:45", "At fifteen forty five"),
        ("at 4:05", "at four oh five"),
        ("Up 12.5% today", "Up twelve point five percent today"),
        ("Dr. Smith", "Doctor Smith"),
        ("on Main St. today", "on Main Street today"),
        ("St. Louis", "Saint Louis"),
        ("fruit, e.g. apples", "fruit, for example apples"),
        ("the 21st time", "the twenty first time"),
        ("in 1999", "in nineteen ninety nine"),
        ("in 2024", "in twenty twenty four"),
        ("1,250 people", "one thousand two hundred fifty people"),
        ("3-5 days", "three to five days"),
        ("pi is 3.14", "pi is three point one four"),
    ],
)
def test_expansions(text: str, spoken: str) -> None:
    assert normalize_for_speech(text) == spoken


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("**Bold** and _it_", "Bold and it"),
        ("# Heading", "Heading"),
        ("- first item", "first item"),
        ("1. first item", "first item"),
        ("see [the docs](https://example.com/a.b)", "see the docs"),
        ("run `make test` now", "run make test now"),
        ("```python", ""),
        ("great job 🙂👍🏽!", "great job !"),
        ("> quoted", "quoted"),
    ],
)
def test_markup_and_emoji_are_stripped(text: str, spoken: str) -> None:
    assert normalize_for_speech(text) == spoken


def test_link_split_across_chunks_loses_its_url() -> None:
    assert normalize_for_speech("Read [the guide,") == "Read the guide,"
    assert normalize_for_speech("it helps](http://x.io/guide) a lot.") == "it helps a lot."


@pytest.mark.parametrize("text", ["", "   ", "**", "🙂🎉", "---", "!!!"])
def test_nothing_speakable_gives_empty(text: str) -> None:
    assert normalize_for_speech(text) == ""


def test_number_words() -> None:
    assert numbers.cardinal(0) == "zero"
    assert numbers.cardinal(1_002_003) == "one million two thousand three"
    assert numbers.ordinal(12) == "twelfth"
    assert numbers.ordinal(30) == "thirtieth"
    assert numbers.year(1905) == "nineteen oh five"
