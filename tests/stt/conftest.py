"""STT fixtures: one loaded tiny.en engine per test run, loopback servers around it, real speech."""

from __future__ import annotations

import gzip
import re
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from voxgrid.services.stt.app import SttRuntime
from voxgrid.services.stt.engines.faster_whisper import FasterWhisperEngine
from voxgrid.services.stt.settings import SttSettings

from tests.conftest import synthesize_speech
from voxgrid.audio import StreamResampler
from voxgrid.server.chassis import start_server

ASTERISK_DIR = Path("/usr/share/asterisk/sounds/en")


def word_error_rate(reference: str, hypothesis: str) -> float:
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    ref, hyp = norm(reference), norm(hypothesis)
    if not ref.strip():
        return 0.0 if not hyp.strip() else 1.0
    return float(jiwer.wer(ref, hyp))


def asterisk_prompts() -> dict[str, str]:
    """name -> transcript of the recorded telephone prompts (spoken words only)."""
    docs = sorted(Path("/usr/share/doc").glob("asterisk-core-sounds-en*/core-sounds-en.txt.gz"))
    if not docs or not ASTERISK_DIR.exists():
        return {}
    out: dict[str, str] = {}
    for line in gzip.open(docs[0], "rt", errors="replace"):
        m = re.match(r"^([\w-]+):\s*(.+)$", line.strip())
        if m and not m.group(2).startswith("[") and (ASTERISK_DIR / f"{m.group(1)}.wav").exists():
            out[m.group(1)] = m.group(2).strip()
    return out


def at_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    return StreamResampler(rate, 16000).process(samples, last=True)


def with_silence(samples: np.ndarray, rate: int, before_s: float = 0.5, after_s: float = 1.0) -> np.ndarray:
    return np.concatenate([np.zeros(int(before_s * rate), np.float32), samples,
                           np.zeros(int(after_s * rate), np.float32)])


@pytest.fixture(scope="session")
def stt_engine() -> FasterWhisperEngine:
    engine = FasterWhisperEngine(cpu_threads=2)
    engine.load()
    return engine


@pytest.fixture
async def stt_server(stt_engine: FasterWhisperEngine) -> AsyncIterator[tuple[str, SttRuntime]]:
    settings = SttSettings(host="127.0.0.1", port=0, max_sessions=8)
    runtime = SttRuntime(settings, engine=stt_engine)
    async with start_server(runtime, settings) as srv:
        await srv.wait_ready()
        yield srv.address, runtime


@pytest.fixture(scope="session")
def booking_speech(speech_dir: Path) -> tuple[np.ndarray, int, str]:
    text = "I would like to book a table for two people tonight at eight."
    samples, rate = synthesize_speech(text, speech_dir / "booking.wav")
    return samples, rate, text


@pytest.fixture(scope="session")
def two_utterances(speech_dir: Path) -> tuple[np.ndarray, int, list[str]]:
    texts = ["Please call me back tomorrow morning.", "The weather is lovely today."]
    parts = [synthesize_speech(t, speech_dir / f"utt{i}.wav") for i, t in enumerate(texts)]
    rate = parts[0][1]
    gap = np.zeros(rate, np.float32)  # one second of silence between them: two utterances
    return np.concatenate([parts[0][0], gap, parts[1][0]]), rate, texts
