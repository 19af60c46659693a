"""Utterances with a mid-sentence pause, for semantic end-of-turn tests and `bench_stt.py --turn-detection`.

Two sets, both at 16 kHz, each utterance with its complete counterpart:
* `corpus`: two flite pieces of one sentence ("I need to change my" + "flight to Boston on Friday.")
  joined by a pause; the whole sentence spoken in one go is the complete one. Voices and pause lengths
  vary. flite speaks each piece as a sentence of its own, so the first piece ends on a falling,
  sentence-final pitch: only the words say it is unfinished.
* `recorded`: a human voice (the Asterisk telephone prompts, 8 kHz recordings) cut at the word boundary
  nearest the middle, found by whisper's word timings, with a pause inserted: the first part keeps the
  prosody of a sentence that goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxgrid.audio import StreamResampler, read_wav
from voxgrid.speech import synthesize

RATE = 16000
VOICES = ("slt", "rms", "awb", "kal16")
SENTENCES = (
    ("I need to change my", "flight to Boston on Friday."),
    ("I would like to book a table for", "two people tomorrow."),
    ("What is the capital of", "France?"),
    ("Can you tell me the", "opening hours of the museum?"),
    ("My account number is", "four five six seven."),
    ("Could you please", "send me the invoice again?"),
    ("I was wondering if you could", "help me with my order."),
    ("The package should arrive", "before the end of the week."),
    ("Please remind me to", "call my mother this evening."),
    ("How long does it take to", "drive from here to the airport?"),
)
PAUSES_S = (0.5, 0.6, 0.7, 0.8)


@dataclass(frozen=True)
class PausedUtterance:
    first: str
    second: str
    voice: str
    pause_s: float
    paused: np.ndarray  # first piece, pause, second piece (16 kHz float32)
    complete: np.ndarray  # the sentence in one go
    pause_at_s: float  # where the pause starts in `paused`

    @property
    def text(self) -> str:
        return f"{self.first} {self.second}"


def speak(text: str, voice: str, folder: Path) -> np.ndarray:
    """`text` by flite's `voice` at 16 kHz, with the synthesiser's leading and trailing silence trimmed."""
    name = "".join(c if c.isalnum() else "_" for c in text)[:60]
    samples, rate = synthesize(text, folder / f"{voice}-{name}.wav", voice=voice)
    if rate != RATE:
        samples = StreamResampler(rate, RATE).process(samples, last=True)
    loud = np.flatnonzero(np.abs(samples) > 0.01)
    return samples[loud[0]: loud[-1] + 1] if len(loud) else samples


def paused_utterance(first: str, second: str, voice: str, pause_s: float, folder: Path) -> PausedUtterance:
    a, b = speak(first, voice, folder), speak(second, voice, folder)
    gap = np.zeros(int(pause_s * RATE), np.float32)
    return PausedUtterance(first, second, voice, pause_s, np.concatenate([a, gap, b]),
                           speak(f"{first} {second}", voice, folder), len(a) / RATE)


def corpus(folder: Path, n: int = 20) -> list[PausedUtterance]:
    """`n` utterances: every sentence in turn, voices and pause lengths rotating."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        first, second = SENTENCES[i % len(SENTENCES)]
        voice = VOICES[(i + i // len(SENTENCES)) % len(VOICES)]
        out.append(paused_utterance(first, second, voice, PAUSES_S[i % len(PAUSES_S)], folder))
    return out


def recorded(whisper_model: object, n: int = 20) -> list[PausedUtterance]:
    """`n` Asterisk prompts of 7-20 words, each cut mid-sentence (a faster_whisper.WhisperModel aligns them)."""
    from tests.stt.conftest import ASTERISK_DIR, asterisk_prompts

    prompts = {k: v for k, v in asterisk_prompts().items() if 7 <= len(v.split()) <= 20}
    names = sorted(prompts)[:: max(1, len(prompts) // (2 * n))]
    out: list[PausedUtterance] = []
    for i, name in enumerate(names):
        if len(out) == n:
            break
        samples, rate = read_wav(ASTERISK_DIR / f"{name}.wav")
        audio = StreamResampler(rate, RATE).process(samples, last=True)
        loud = np.flatnonzero(np.abs(audio) > 0.01)
        audio = audio[loud[0]: loud[-1] + 1]
        segments, _ = whisper_model.transcribe(audio, word_timestamps=True, beam_size=1)  # type: ignore[attr-defined]
        words = [w for seg in segments for w in seg.words]
        k = len(words) // 2
        if len(words) < 5:
            continue
        if words[k - 1].word.strip()[-1:] in ".,?!;:":  # a clause ends there: take the next boundary
            k += 1
        cut = int(RATE * (words[k - 1].end + words[k].start) / 2)
        pause_s = PAUSES_S[i % len(PAUSES_S)]
        out.append(PausedUtterance(
            " ".join(w.word.strip() for w in words[:k]), " ".join(w.word.strip() for w in words[k:]), "asterisk",
            pause_s, np.concatenate([audio[:cut], np.zeros(int(pause_s * RATE), np.float32), audio[cut:]]),
            audio, cut / RATE))
    return out
