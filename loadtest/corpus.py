"""What the simulated callers say: real speech as PCM16 16 kHz, cut into 20 ms frames.

A corpus is a folder of wavs (any rate; resampled once at load) or, by default, a handful of short
questions synthesised on the spot with flite and cached under ~/.cache/voxgrid/loadtest-corpus.
Each utterance keeps its text so the text-only modes (llm, tts) send the same questions.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxgrid.audio import StreamResampler, encode, pcm16_spec, read_wav

SAMPLE_RATE = 16000
FRAME_MS = 20
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000 * 2
INPUT_SPEC = pcm16_spec(SAMPLE_RATE)
CACHE_DIR = Path.home() / ".cache" / "voxgrid" / "loadtest-corpus"

DEFAULT_QUESTIONS: tuple[str, ...] = (
    "What time does the store open tomorrow?",
    "Can you book a table for two tonight?",
    "What is the capital of France?",
    "How is the weather going to be this weekend?",
    "I would like to change my delivery address.",
    "Please tell me a short fact about the moon.",
)


@dataclass(frozen=True)
class Utterance:
    text: str
    pcm16: bytes  # mono, 16 kHz

    @property
    def duration_ms(self) -> int:
        return len(self.pcm16) * 1000 // (2 * SAMPLE_RATE)

    def frames(self) -> list[bytes]:
        """20 ms frames; the last one is zero-padded so every frame holds whole samples."""
        data = self.pcm16 + b"\0" * (-len(self.pcm16) % FRAME_BYTES)
        return [data[i : i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES)]


def silence_frame() -> bytes:
    return b"\0" * FRAME_BYTES


def _to_pcm16_16k(samples: np.ndarray, rate: int) -> bytes:
    if rate != SAMPLE_RATE:
        samples = StreamResampler(rate, SAMPLE_RATE).process(samples.astype(np.float32), last=True)
    return encode(samples, INPUT_SPEC)


def load_wav_utterance(path: Path, text: str = "") -> Utterance:
    samples, rate = read_wav(path)
    return Utterance(text or path.stem.replace("_", " "), _to_pcm16_16k(samples, rate))


def synthesize(text: str, cache_dir: Path = CACHE_DIR) -> Utterance:
    """Speak `text` with flite (cached by content hash)."""
    if shutil.which("flite") is None:
        raise RuntimeError("flite is not installed: apt-get install flite, or pass --corpus DIR of wav files")
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{hashlib.sha1(text.encode()).hexdigest()[:16]}.wav"
    if not path.exists():
        tmp = path.with_suffix(".tmp.wav")
        subprocess.run(["flite", "-t", text, "-o", str(tmp)], check=True, timeout=60)
        tmp.replace(path)
    return load_wav_utterance(path, text)


def load_corpus(source: str | Path | None = None) -> list[Utterance]:
    """Wavs of a folder (a sibling .txt holds each transcript, if any), or the default flite questions."""
    if not source:
        return [synthesize(q) for q in DEFAULT_QUESTIONS]
    folder = Path(source)
    wavs = sorted(folder.glob("*.wav"))
    if not wavs:
        raise ValueError(f"corpus folder {folder} holds no .wav files")
    out = []
    for wav in wavs:
        txt = wav.with_suffix(".txt")
        out.append(load_wav_utterance(wav, txt.read_text().strip() if txt.exists() else ""))
    return out
