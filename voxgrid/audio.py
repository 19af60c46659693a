"""The one audio-format layer: every byte of audio that enters or leaves voxgrid passes through here.

Services work on float32 mono samples in [-1, 1] at their engine's native rate; the wire carries PCM16,
G.711 mu-law or A-law at 8/16/22.05/24/48 kHz. Conversion happens once, where audio enters a session
(`AudioIn`) or leaves it (`AudioOut`), with a streaming resampler whose state lives per stream so chunk
boundaries leave no clicks.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from voxgrid.v1 import audio_pb2

SUPPORTED_RATES: tuple[int, ...] = (8000, 16000, 22050, 24000, 48000)
PCM16 = audio_pb2.AUDIO_ENCODING_PCM16
MULAW = audio_pb2.AUDIO_ENCODING_MULAW
ALAW = audio_pb2.AUDIO_ENCODING_ALAW
_BYTES_PER_SAMPLE = {PCM16: 2, MULAW: 1, ALAW: 1}
_ENCODING_NAMES = {PCM16: "PCM16", MULAW: "MULAW", ALAW: "ALAW"}


class AudioFormatError(ValueError):
    """Audio or its declared format is unusable; the message tells the client what to send instead."""


@dataclass(frozen=True)
class AudioSpec:
    """A validated audio format (the proto `AudioFormat` after checks)."""

    encoding: int
    sample_rate_hz: int
    channels: int = 1

    @classmethod
    def from_proto(cls, fmt: audio_pb2.AudioFormat | None, *, what: str = "format") -> AudioSpec:
        """Validate a wire format; raise AudioFormatError naming the field and the accepted values."""
        if fmt is None or (fmt.encoding == 0 and fmt.sample_rate_hz == 0):
            raise AudioFormatError(
                f"{what} is required: set encoding (PCM16, MULAW or ALAW) and sample_rate_hz "
                f"(one of {', '.join(map(str, SUPPORTED_RATES))})"
            )
        if fmt.encoding not in _BYTES_PER_SAMPLE:
            known = fmt.encoding in audio_pb2.AudioEncoding.values()
            name = audio_pb2.AudioEncoding.Name(fmt.encoding) if known else str(fmt.encoding)
            raise AudioFormatError(f"{what}.encoding {name} is not supported: use PCM16, MULAW or ALAW")
        if fmt.sample_rate_hz not in SUPPORTED_RATES:
            raise AudioFormatError(
                f"{what}.sample_rate_hz {fmt.sample_rate_hz} is not supported: use one of "
                f"{', '.join(map(str, SUPPORTED_RATES))}"
            )
        channels = fmt.channels or 1
        if channels != 1:
            raise AudioFormatError(f"{what}.channels {channels} is not supported: send mono audio (1 channel)")
        return cls(fmt.encoding, fmt.sample_rate_hz, channels)

    def to_proto(self) -> audio_pb2.AudioFormat:
        return audio_pb2.AudioFormat(encoding=self.encoding, sample_rate_hz=self.sample_rate_hz, channels=self.channels)

    @property
    def bytes_per_sample(self) -> int:
        return _BYTES_PER_SAMPLE[self.encoding]

    def bytes_for_ms(self, ms: float) -> int:
        """Byte length of `ms` of audio, rounded down to whole samples."""
        return int(self.sample_rate_hz * ms / 1000) * self.bytes_per_sample

    def duration_ms(self, n_bytes: int) -> float:
        return 1000.0 * n_bytes / self.bytes_per_sample / self.sample_rate_hz

    def __str__(self) -> str:
        return f"{_ENCODING_NAMES[self.encoding]} {self.sample_rate_hz} Hz mono"


def pcm16_spec(rate: int) -> AudioSpec:
    return AudioSpec(PCM16, rate)


# --- G.711 -------------------------------------------------------------------------------------------
# Decoding tables are exact (ITU-T G.711); encoding is vectorised so a 20 ms phone frame costs microseconds.

def _mulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _alaw_decode_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, np.where(seg == 1, t + 0x108, (t + 0x108) << np.maximum(seg - 1, 0)))
    return np.where(a & 0x80, t, -t).astype(np.int16)


_MULAW_TABLE = _mulaw_decode_table()
_ALAW_TABLE = _alaw_decode_table()


def _mulaw_encode(pcm: np.ndarray) -> np.ndarray:
    x = pcm.astype(np.int32) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    x = np.minimum(np.abs(x), 8159) + 33
    seg = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), x, side="left")
    uval = np.where(seg >= 8, 0x7F, (seg << 4) | ((x >> (np.minimum(seg, 7) + 1)) & 0x0F))
    return (uval ^ mask).astype(np.uint8)


def _alaw_encode(pcm: np.ndarray) -> np.ndarray:
    x = pcm.astype(np.int32) >> 3
    mask = np.where(x >= 0, 0xD5, 0x55)
    x = np.where(x >= 0, x, -x - 1)
    seg = np.searchsorted(np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF]), x, side="left")
    aval = np.where(seg < 2, (seg << 4) | ((x >> 1) & 0x0F), (seg << 4) | ((x >> np.maximum(seg, 1)) & 0x0F))
    aval = np.where(seg >= 8, 0x7F, aval)
    return (aval ^ mask).astype(np.uint8)


# --- bytes <-> float32 ------------------------------------------------------------------------------

def decode(data: bytes, spec: AudioSpec) -> np.ndarray:
    """Wire bytes to float32 mono in [-1, 1]; refuses a partial trailing sample."""
    if len(data) % spec.bytes_per_sample:
        raise AudioFormatError(
            f"audio chunk of {len(data)} bytes is not a whole number of {spec} samples "
            f"({spec.bytes_per_sample} bytes each): send whole samples in every message"
        )
    if spec.encoding == PCM16:
        pcm = np.frombuffer(data, dtype="<i2")
    else:
        table = _MULAW_TABLE if spec.encoding == MULAW else _ALAW_TABLE
        pcm = table[np.frombuffer(data, dtype=np.uint8)]
    return pcm.astype(np.float32) / 32768.0


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768.0).round().astype("<i2")


def encode(samples: np.ndarray, spec: AudioSpec) -> bytes:
    """float32 mono in [-1, 1] to wire bytes (clipped, rounded)."""
    pcm = to_pcm16(np.asarray(samples, dtype=np.float32))
    if spec.encoding == PCM16:
        return pcm.tobytes()
    if spec.encoding == MULAW:
        return _mulaw_encode(pcm).tobytes()
    return _alaw_encode(pcm).tobytes()


# --- streaming resampling ----------------------------------------------------------------------------

class StreamResampler:
    """Resamples a stream chunk by chunk with state carried across chunks (soxr), identity when equal."""

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)
        )

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.asarray(samples, dtype=np.float32)
        if self._stream is None:
            return x
        return self._stream.resample_chunk(x, last=last)


class AudioIn:
    """Where a client's audio enters a session: validate, decode, resample to the engine's rate."""

    def __init__(self, spec: AudioSpec, target_rate: int) -> None:
        self.spec = spec
        self.target_rate = target_rate
        self._resampler = StreamResampler(spec.sample_rate_hz, target_rate)
        self.received_samples = 0  # at the client's rate: the clock for stream offsets

    def feed(self, data: bytes) -> np.ndarray:
        x = decode(data, self.spec)
        self.received_samples += len(x)
        return self._resampler.process(x)

    def flush(self) -> np.ndarray:
        return self._resampler.process(np.zeros(0, dtype=np.float32), last=True)

    @property
    def received_ms(self) -> float:
        return 1000.0 * self.received_samples / self.spec.sample_rate_hz


class AudioOut:
    """Where engine audio leaves a session: resample from the engine's rate and encode for the client."""

    def __init__(self, source_rate: int, spec: AudioSpec) -> None:
        self.spec = spec
        self.source_rate = source_rate
        self._resampler = StreamResampler(source_rate, spec.sample_rate_hz)

    def feed(self, samples: np.ndarray) -> bytes:
        return encode(self._resampler.process(samples), self.spec)

    def flush(self) -> bytes:
        return encode(self._resampler.process(np.zeros(0, dtype=np.float32), last=True), self.spec)


def frames(samples: np.ndarray, frame_len: int) -> list[np.ndarray]:
    """Split into frames of exactly `frame_len`, zero-padding the last one."""
    n = -(-len(samples) // frame_len) if len(samples) else 0
    padded = np.zeros(n * frame_len, dtype=np.float32)
    padded[: len(samples)] = samples
    return [padded[i * frame_len : (i + 1) * frame_len] for i in range(n)]


class FrameBuffer:
    """Accumulates samples and hands out fixed-size frames (VAD windows, codec frames)."""

    def __init__(self, frame_len: int) -> None:
        self.frame_len = frame_len
        self._buf = np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        self._buf = np.concatenate([self._buf, np.asarray(samples, dtype=np.float32)])
        n = len(self._buf) // self.frame_len
        out = [self._buf[i * self.frame_len : (i + 1) * self.frame_len] for i in range(n)]
        self._buf = self._buf[n * self.frame_len :]
        return out

    def __len__(self) -> int:
        return len(self._buf)


# --- files --------------------------------------------------------------------------------------------

def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Any wav soundfile reads (PCM, float, mu-law) to float32 mono and its rate."""
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1).astype(np.float32), int(rate)


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> None:
    """16-bit PCM mono wav."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(to_pcm16(samples).tobytes())
