"""benchmarks/bench_peer.py measures voice-to-voice from the frame holding the last speech sample."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_peer import last_speech_frame
from voxgrid.audio import read_wav, write_wav

RATE = 16000


def synthetic_question(speech_end_s: float, total_s: float = 2.0) -> np.ndarray:
    """A tone (speech) from 0.3 s to `speech_end_s`, then quiet hiss below -40 dBFS, then silence."""
    rng = np.random.default_rng(7)
    x = np.zeros(int(RATE * total_s), np.float32)
    t = np.arange(int(RATE * 0.3), int(RATE * speech_end_s))
    x[t] = 0.3 * np.sin(2 * np.pi * 220 * t / RATE)
    hiss = slice(int(RATE * speech_end_s), int(RATE * (speech_end_s + 0.4)))
    x[hiss] = rng.uniform(-0.008, 0.008, hiss.stop - hiss.start)  # -42 dBFS peak: not speech
    return x


@pytest.mark.parametrize("speech_end_s", [1.0, 1.013, 1.019])
def test_the_frame_holding_the_last_speech_sample_is_found(tmp_path, speech_end_s) -> None:
    path = tmp_path / "q.wav"
    write_wav(path, synthetic_question(speech_end_s), RATE)
    x, rate = read_wav(path)  # through a real 16-bit wav, as the peer's questions are
    last_sample = int(RATE * speech_end_s) - 1
    assert abs(x[last_sample]) >= 0.01 or abs(x[last_sample - 1]) >= 0.01
    frame = last_speech_frame(x, rate)
    loud = np.nonzero(np.abs(x) >= 0.01)[0][-1]
    assert frame == loud // 320  # 20 ms frames at 16 kHz
    assert frame == (int(RATE * speech_end_s) - 1) // 320 or frame == (int(RATE * speech_end_s) - 2) // 320
    # int16 samples (as a wav read raw) give the same frame
    assert last_speech_frame((x * 32767).astype(np.int16), rate) == frame


def test_a_louder_threshold_ends_speech_sooner_and_silence_is_refused() -> None:
    x = synthetic_question(1.0)
    x[int(RATE * 0.6):int(RATE * 1.0)] *= 0.05  # a -36 dBFS tail: speech at -40 dBFS, not at -30
    assert last_speech_frame(x, RATE) == (RATE - 1) // 320
    assert last_speech_frame(x, RATE, threshold_dbfs=-30) == (int(RATE * 0.6) - 1) // 320
    with pytest.raises(ValueError, match="dBFS"):
        last_speech_frame(np.zeros(RATE, np.float32), RATE)
