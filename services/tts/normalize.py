"""Text to speakable words: what an LLM writes is not what a voice should say.

LLMs emit markdown (`**bold**`, `# headings`, lists, links, code), emoji, money, times, percentages and
abbreviations. The voice would read the asterisks or guess at "$12.50". This module turns one chunk of
text (a clause or sentence the chunker cut) into plain words. It works chunk by chunk, so it must not
rely on seeing a whole document: markdown pairs split across chunks still lose their markers, because
markers are removed one by one rather than matched as pairs.

English rules only today; `language` other than "en" gets markdown/emoji stripping but no expansion.
"""

from __future__ import annotations

import re
import unicodedata

from voxgrid.services.tts import numbers

# --- markdown and symbols ---------------------------------------------------------------------------
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_LINK_TAIL = re.compile(r"\]\([^)\s]*\)?")  # "](url)" when the "[text" half was in the previous chunk
_URL = re.compile(r"\bhttps?://\S+|\bwww\.\S+")
_CODE_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*")
_LINE_MARKER = re.compile(r"(^|\n)[ \t]*(?:#{1,6}[ \t]+|>[ \t]*|[-*+•][ \t]+|\d{1,3}[.)][ \t]+)")
_HRULE = re.compile(r"(^|\n)[ \t]*(?:[-*_][ \t]*){3,}(?=\n|$)")
_EMPHASIS = re.compile(r"\*+|(?<!\w)_+|_+(?!\w)|~~|`")
_TABLE_PIPE = re.compile(r"\s*\|\s*")

# --- numbers, money, times ----------------------------------------------------------------------------
_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
               "£": ("pound", "pounds", "penny", "pence")}
_MONEY = re.compile(rf"([$€£])\s?({_NUM})(?:\s?(thousand|million|billion|trillion|[kKmMbB]n?)\b)?")
_TIME = re.compile(r"\b(\d{1,2}):(\d{2})(?:\s?([aApP])\.?\s?[mM]\b)?")  # a final "." stays: it may end a sentence
_AMPM = re.compile(r"\b(\d{1,2})\s?([aApP])\.?[mM]\b")
_PERCENT = re.compile(rf"({_NUM})\s?%")
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b")
_YEAR = re.compile(r"(?<![\d.,$])\b(1[1-9]\d\d|20\d\d)\b(?![\d,]|\.\d)")
_NUMBER = re.compile(rf"(?<![\w.])(-?)({_NUM})(?!\w)")
_RANGE_DASH = re.compile(r"(?<=\d)\s?[-–]\s?(?=\d)")

_ABBREVIATIONS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(pattern), spoken)
    for pattern, spoken in [
        (r"\be\.g\.", "for example"),
        (r"\bi\.e\.", "that is"),
        (r"\betc\.", "et cetera"),
        (r"\bvs\.?(?=\s)", "versus"),
        (r"\bDr\.(?=\s)", "Doctor"),
        (r"\bMr\.(?=\s)", "Mister"),
        (r"\bMrs\.(?=\s)", "Missus"),
        (r"\bMs\.(?=\s)", "Miz"),
        (r"\bProf\.(?=\s)", "Professor"),
        (r"\bJr\.", "Junior"),
        (r"\bSr\.", "Senior"),
        (r"\bSt\.(?=\s+[A-Z])", "Saint"),  # St. Louis
        (r"\bSt\.", "Street"),  # 5th St.
        (r"\bAve\.", "Avenue"),
        (r"\bapprox\.", "approximately"),
        (r"\bNo\.(?=\s*\d)", "number"),
        (r"\bmin\.", "minutes"),
        (r"\bhrs?\.", "hours"),
        (r"\bkm\b", "kilometers"),
        (r"\bkg\b", "kilograms"),
        (r"\bmph\b", "miles per hour"),
        (r"\bmin\b(?=\s*$|\s*[,.;])", "minutes"),
        (r"&", " and "),
        (r"@", " at "),
        (r"\+", " plus "),
        (r"=", " equals "),
        (r"°F\b", " degrees Fahrenheit"),
        (r"°C\b", " degrees Celsius"),
        (r"°", " degrees"),
    ]
]


def _is_emoji(ch: str) -> bool:
    """Pictographs, dingbats, flags, joiners and variation selectors: nothing a voice can say."""
    cp = ord(ch)
    if ch in "\u200d\ufe0e\ufe0f\u20e3" or 0x1F1E6 <= cp <= 0x1F1FF or 0x1F3FB <= cp <= 0x1F3FF:
        return True
    return unicodedata.category(ch) == "So" or 0x1F000 <= cp <= 0x1FAFF or 0x2600 <= cp <= 0x27BF


def _money(m: re.Match[str]) -> str:
    one, many, sub_one, sub_many = _CURRENCIES[m.group(1)]
    amount, scale = m.group(2).replace(",", ""), m.group(3)
    if scale:
        scale_word = {"k": "thousand", "m": "million", "b": "billion", "bn": "billion"}.get(scale.lower(), scale)
        return f"{numbers.decimal(amount)} {scale_word} {many}"
    whole, _, frac = amount.partition(".")
    w = int(whole or "0")
    spoken = f"{numbers.cardinal(w)} {one if w == 1 else many}"
    if frac:
        cents = int((frac + "0")[:2])
        if cents:
            spoken += f" and {numbers.cardinal(cents)} {sub_one if cents == 1 else sub_many}"
        if w == 0 and cents:
            spoken = f"{numbers.cardinal(cents)} {sub_one if cents == 1 else sub_many}"
    return spoken


def _time(m: re.Match[str]) -> str:
    hour, minute, ampm = int(m.group(1)), int(m.group(2)), m.group(3)
    if hour > 24 or minute > 59:
        return m.group(0).replace(":", " ")
    spoken = numbers.cardinal(hour)
    if minute == 0:
        spoken += "" if ampm else " hundred" if hour > 12 or hour == 0 else " o'clock"
    elif minute < 10:
        spoken += f" oh {numbers.cardinal(minute)}"
    else:
        spoken += f" {numbers.cardinal(minute)}"
    if ampm:
        spoken += " a m" if ampm.lower() == "a" else " p m"
    return spoken


def _number(m: re.Match[str]) -> str:
    sign = "minus " if m.group(1) else ""
    return sign + numbers.decimal(m.group(2))


def strip_markup(text: str) -> str:
    """Remove markdown syntax, URLs and emoji, keeping the words a listener should hear."""
    text = _CODE_FENCE.sub(" ", text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _LINK_TAIL.sub("", text)
    text = _URL.sub("link", text)
    text = _HRULE.sub(r"\1", text)
    text = _LINE_MARKER.sub(r"\1", text)
    text = _EMPHASIS.sub("", text)
    text = text.replace("[", "").replace("]", "")
    text = _TABLE_PIPE.sub(", ", text) if "|" in text else text
    return "".join(" " if _is_emoji(ch) else ch for ch in text)


def expand_for_speech(text: str) -> str:
    """English expansions: money, times, percentages, ordinals, years, numbers, abbreviations."""
    text = _MONEY.sub(_money, text)
    text = _TIME.sub(_time, text)
    text = _AMPM.sub(lambda m: f"{numbers.cardinal(int(m.group(1)))} {'a m' if m.group(2) in 'aA' else 'p m'}", text)
    text = _PERCENT.sub(lambda m: f"{numbers.decimal(m.group(1))} percent", text)
    text = _ORDINAL.sub(lambda m: numbers.ordinal(int(m.group(1))), text)
    text = _RANGE_DASH.sub(" to ", text)
    text = _YEAR.sub(lambda m: numbers.year(int(m.group(1))), text)
    for pattern, spoken in _ABBREVIATIONS:
        text = pattern.sub(spoken, text)
    return _NUMBER.sub(_number, text)


def normalize_for_speech(text: str, language: str = "en") -> str:
    """One chunk of LLM text to what the voice should say; '' when nothing in it is speakable."""
    text = unicodedata.normalize("NFC", text)
    text = strip_markup(text)
    if language in ("", "en") or language.startswith("en-"):
        text = expand_for_speech(text)
    text = re.sub(r"\s+", " ", text).strip()
    return text if is_speakable(text) else ""


def is_speakable(text: str) -> bool:
    """True when the text has at least one letter or digit (punctuation alone makes no sound)."""
    return any(ch.isalnum() for ch in text)
