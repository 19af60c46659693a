"""The one audio-format layer: every byte of audio that enters or leaves voxgrid passes through here.

Services work on float32 mono samples in [-1, 1] at their engine's native rate; the wire carries PCM16,
G.711 mu-law or A-law at 8/16/22.05/24/48 kHz, or Opus packets (one per message, voxgrid/opus.py).
Conversion happens once, where audio enters a session (`AudioIn`) or leaves it (`AudioOut`), with a
streaming resampler (and, for Opus, a codec) whose state lives per stream so chunk boundaries leave no
clicks.
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
OPUS = audio_pb2.AUDIO_ENCODING_OPUS
_BYTES_PER_SAMPLE = {PCM16: 2, MULAW: 1, ALAW: 1}
_ENCODING_NAMES = {PCM16: "PCM16", MULAW: "MULAW", ALAW: "ALAW", OPUS: "OPUS"}


class AudioFormatError(ValueError):
    """Audio or its declared format is unusable; the message tells the client what to send instead."""


@dataclass(frozen=True)
class AudioSpec:
    """A validated audio format (the proto `AudioFormat` after checks)."""

    encoding: int
    sample_rate_hz: int
    channels: int = 1
    opus_bitrate_bps: int = 0  # Opus output only; 0 = the codec module's default

    @classmethod
    def from_proto(cls, fmt: audio_pb2.AudioFormat | None, *, what: str = "format", allow_opus: bool = False
                   ) -> AudioSpec:
        """Validate a wire format; raise AudioFormatError naming the field and the accepted values.

        Opus is accepted only where the caller handles packets (`allow_opus`): the orchestrator's edge."""
        if fmt is None or (fmt.encoding == 0 and fmt.sample_rate_hz == 0):
            raise AudioFormatError(
                f"{what} is required: set encoding (PCM16, MULAW, ALAW or OPUS) and sample_rate_hz "
                f"(one of {', '.join(map(str, SUPPORTED_RATES))})"
            )
        if fmt.encoding not in _ENCODING_NAMES:
            known = fmt.encoding in audio_pb2.AudioEncoding.values()
            name = audio_pb2.AudioEncoding.Name(fmt.encoding) if known else str(fmt.encoding)
            raise AudioFormatError(f"{what}.encoding {name} is not supported: use PCM16, MULAW, ALAW or OPUS")
        if fmt.encoding == OPUS:
            from voxgrid.opus import MAX_BITRATE, MIN_BITRATE, OPUS_RATES

            if not allow_opus:
                raise AudioFormatError(f"{what}.encoding OPUS is not supported by this service: use PCM16, MULAW or "
                                       "ALAW (the orchestrator's Converse takes Opus)")
            if fmt.sample_rate_hz not in OPUS_RATES:
                raise AudioFormatError(
                    f"{what}.sample_rate_hz {fmt.sample_rate_hz} is not an Opus rate: use one of "
                    f"{', '.join(map(str, OPUS_RATES))}"
                )
            if fmt.opus_bitrate_bps and not MIN_BITRATE <= fmt.opus_bitrate_bps <= MAX_BITRATE:
                raise AudioFormatError(
                    f"{what}.opus_bitrate_bps {fmt.opus_bitrate_bps} is out of range [{MIN_BITRATE}, "
                    f"{MAX_BITRATE}] (0 = 24000)"
                )
        if fmt.sample_rate_hz not in SUPPORTED_RATES:
            raise AudioFormatError(
                f"{what}.sample_rate_hz {fmt.sample_rate_hz} is not supported: use one of "
                f"{', '.join(map(str, SUPPORTED_RATES))}"
            )
        channels = fmt.channels or 1
        if channels != 1:
            raise AudioFormatError(f"{what}.channels {channels} is not supported: send mono audio (1 channel)")
        return cls(fmt.encoding, fmt.sample_rate_hz, channels, fmt.opus_bitrate_bps if fmt.encoding == OPUS else 0)

    def to_proto(self) -> audio_pb2.AudioFormat:
        return audio_pb2.AudioFormat(encoding=self.encoding, sample_rate_hz=self.sample_rate_hz, channels=self.channels,
                                     opus_bitrate_bps=self.opus_bitrate_bps)

    @property
    def packetized(self) -> bool:
        """True for Opus: a message is one codec packet, and its length says nothing about its duration."""
        return self.encoding == OPUS

    @property
    def bytes_per_sample(self) -> int:
        if self.encoding == OPUS:
            raise AudioFormatError("Opus has no bytes per sample: use packet_duration_ms / AudioIn for its length")
        return _BYTES_PER_SAMPLE[self.encoding]

    def bytes_for_ms(self, ms: float) -> int:
        """Byte length of `ms` of audio, rounded down to whole samples."""
        return int(self.sample_rate_hz * ms / 1000) * self.bytes_per_sample

    def duration_ms(self, n_bytes: int) -> float:
        return 1000.0 * n_bytes / self.bytes_per_sample / self.sample_rate_hz

    def message_ms(self, data: bytes) -> float:
        """Audio length of one wire message in this format (an Opus packet, or PCM/G.711 bytes)."""
        if self.encoding == OPUS:
            from voxgrid.opus import packet_duration_ms

            return packet_duration_ms(data)
        return self.duration_ms(len(data))

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
    """Wire bytes to float32 mono in [-1, 1]; refuses a partial trailing sample. Opus (stateful) needs AudioIn."""
    if spec.encoding == OPUS:
        raise AudioFormatError("Opus audio keeps codec state per stream: decode it through AudioIn")
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
    """float32 mono in [-1, 1] to wire bytes (clipped, rounded). Opus (stateful) needs AudioOut.packets."""
    if spec.encoding == OPUS:
        raise AudioFormatError("Opus audio keeps codec state per stream: encode it through AudioOut.packets")
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
    """Where a client's audio enters a session: validate, decode, resample to the engine's rate.

    Opus: each `feed` is one packet; the stream's decoder lives here, decoding at 48 kHz."""

    def __init__(self, spec: AudioSpec, target_rate: int) -> None:
        self.spec = spec
        self.target_rate = target_rate
        self._opus = None
        decoded_rate = spec.sample_rate_hz
        if spec.encoding == OPUS:
            from voxgrid.opus import OpusDecoder

            self._opus = OpusDecoder()
            decoded_rate = self._opus.rate
        self._decoded_rate = decoded_rate
        self._resampler = StreamResampler(decoded_rate, target_rate)
        self.received_samples = 0  # at the decoded rate (the client's, or 48 kHz for Opus): the offset clock

    def feed(self, data: bytes) -> np.ndarray:
        if self._opus is not None:
            from voxgrid.opus import OpusError

            try:
                x = self._opus.decode(data)
            except OpusError as exc:
                raise AudioFormatError(str(exc)) from exc
        else:
            x = decode(data, self.spec)
        self.received_samples += len(x)
        return self._resampler.process(x)

    def flush(self) -> np.ndarray:
        return self._resampler.process(np.zeros(0, dtype=np.float32), last=True)

    @property
    def received_ms(self) -> float:
        return 1000.0 * self.received_samples / self._decoded_rate


class AudioOut:
    """Where engine audio leaves a session: resample from the engine's rate and encode for the client.

    `packets` works for every encoding (one message each); `feed`/`flush` return PCM or G.711 bytes and
    refuse Opus, whose 20 ms packets must each go out as their own message."""

    def __init__(self, source_rate: int, spec: AudioSpec) -> None:
        self.spec = spec
        self.source_rate = source_rate
        self._resampler = StreamResampler(source_rate, spec.sample_rate_hz)
        self._opus = None
        if spec.encoding == OPUS:
            from voxgrid.opus import OpusEncoder

            self._opus = OpusEncoder(spec.sample_rate_hz, spec.opus_bitrate_bps)

    def feed(self, samples: np.ndarray) -> bytes:
        return encode(self._resampler.process(samples), self.spec)

    def flush(self) -> bytes:
        return encode(self._resampler.process(np.zeros(0, dtype=np.float32), last=True), self.spec)

    def packets(self, samples: np.ndarray, last: bool = False) -> list[bytes]:
        """Wire messages for `samples`: Opus packets (20 ms each; `last` pads and flushes the final one), or
        one PCM/G.711 message (none when empty)."""
        y = self._resampler.process(samples, last=last)
        if self._opus is None:
            data = encode(y, self.spec)
            return [data] if data else []
        out = self._opus.encode(y)
        return out + self._opus.flush() if last else out


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
