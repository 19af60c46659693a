"""Opus for the audio layer: raw packets (no Ogg, no RTP), one packet per audio message, state per stream.

The codec is libopus through PyAV (`av`, wheels with libopus inside; the binding aiortc uses), so no
system library is needed. A decoder turns each packet into 48 kHz float32 (Opus decodes at 48 kHz; the
audio layer resamples to whatever the engine wants). An encoder cuts 20 ms frames from whatever chunk
sizes it is fed and emits one packet per frame, so output packets map one-to-one onto messages.
`packet_duration_ms` reads a packet's length from its table-of-contents byte (RFC 6716 section 3.1)
without decoding, which is what playout and offset bookkeeping need.
"""

from __future__ import annotations

import numpy as np

OPUS_RATES: tuple[int, ...] = (8000, 16000, 24000, 48000)
DECODE_RATE = 48000
FRAME_MS = 20
DEFAULT_BITRATE = 24000
MIN_BITRATE, MAX_BITRATE = 6000, 128000
# Frame length by TOC config (RFC 6716 table 2), in units of 0.1 ms.
_CONFIG_FRAME_TENTHS = (
    [100, 200, 400, 600] * 3  # SILK NB/MB/WB
    + [100, 200] * 2  # hybrid SWB/FB
    + [25, 50, 100, 200] * 4  # CELT NB/WB/SWB/FB
)


class OpusError(ValueError):
    """A packet that is not Opus (or not whole); the message says what the stream must carry."""


def packet_duration_ms(packet: bytes) -> float:
    """Audio length of one Opus packet from its TOC byte (and frame-count byte for code 3)."""
    if not packet:
        raise OpusError("empty Opus packet: send one whole Opus packet per audio message")
    toc = packet[0]
    frame = _CONFIG_FRAME_TENTHS[toc >> 3] / 10.0
    code = toc & 0x3
    if code == 0:
        n = 1
    elif code in (1, 2):
        n = 2
    else:
        if len(packet) < 2:
            raise OpusError("Opus packet with frame-count code 3 but no count byte: the packet is cut short")
        n = packet[1] & 0x3F
    if n == 0 or n * frame > 120:
        raise OpusError(f"Opus packet claims {n} frames of {frame} ms: not an Opus packet (over 120 ms)")
    return n * frame


def _context(mode: str, rate: int):  # type: ignore[no-untyped-def]
    import av

    ctx = av.CodecContext.create("libopus", mode)
    ctx.sample_rate = rate
    ctx.layout = "mono"
    ctx.format = "s16"
    return ctx


class OpusDecoder:
    """One stream's decoder: a packet in, 48 kHz float32 out. An empty packet conceals one lost 20 ms."""

    rate = DECODE_RATE

    def __init__(self) -> None:
        import av

        self._av = av
        self._ctx = _context("r", DECODE_RATE)
        self._ctx.open()
        self.decoded_samples = 0

    def decode(self, packet: bytes) -> np.ndarray:
        if not packet:  # lost packet: keep the clock right with silence of one output frame
            y = np.zeros(DECODE_RATE * FRAME_MS // 1000, dtype=np.float32)
            self.decoded_samples += len(y)
            return y
        packet_duration_ms(packet)  # refuse non-Opus bytes with a clear message before libopus sees them
        try:
            frames = self._ctx.decode(self._av.Packet(packet))
        except self._av.error.FFmpegError as exc:
            raise OpusError(f"Opus packet of {len(packet)} bytes did not decode ({exc}): send one whole Opus "
                            "packet per audio message, in order") from exc
        out = [_to_float(f.to_ndarray()) for f in frames]
        y = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
        self.decoded_samples += len(y)
        return y


def _to_float(a: np.ndarray) -> np.ndarray:
    a = a.reshape(-1) if a.shape[0] == 1 else a.mean(axis=0)
    if a.dtype == np.int16:
        return a.astype(np.float32) / 32768.0
    return a.astype(np.float32)


class OpusEncoder:
    """One stream's encoder at `rate` (an Opus API rate): float32 in any chunk sizes, 20 ms packets out."""

    def __init__(self, rate: int, bitrate: int = 0) -> None:
        import av

        if rate not in OPUS_RATES:
            raise OpusError(f"Opus runs at {', '.join(map(str, OPUS_RATES))} Hz, not {rate}")
        bitrate = bitrate or DEFAULT_BITRATE
        if not MIN_BITRATE <= bitrate <= MAX_BITRATE:
            raise OpusError(f"opus_bitrate_bps {bitrate} is out of range [{MIN_BITRATE}, {MAX_BITRATE}]")
        self._av = av
        self.rate = rate
        self.frame_len = rate * FRAME_MS // 1000
        self._ctx = _context("w", rate)
        self._ctx.bit_rate = bitrate
        self._ctx.options = {"frame_duration": str(FRAME_MS), "application": "voip"}
        self._ctx.open()
        self._pending = np.zeros(0, dtype=np.int16)
        self._pts = 0

    def _encode(self, frame: np.ndarray | None) -> list[bytes]:
        if frame is None:
            return [bytes(p) for p in self._ctx.encode(None)]
        f = self._av.AudioFrame.from_ndarray(frame[None, :], format="s16", layout="mono")
        f.sample_rate = self.rate
        f.pts = self._pts
        self._pts += len(frame)
        return [bytes(p) for p in self._ctx.encode(f)]

    def encode(self, samples: np.ndarray) -> list[bytes]:
        """Packets for every whole 20 ms frame available; the remainder waits for the next call."""
        from voxgrid.audio import to_pcm16

        buf = np.concatenate([self._pending, to_pcm16(np.asarray(samples, dtype=np.float32))])
        n = len(buf) // self.frame_len
        out: list[bytes] = []
        for i in range(n):
            out += self._encode(buf[i * self.frame_len : (i + 1) * self.frame_len])
        self._pending = buf[n * self.frame_len :]
        return out

    def discard(self) -> None:
        """Drop audio waiting for a whole frame (the utterance it belonged to was cut off)."""
        self._pending = np.zeros(0, dtype=np.int16)

    def flush(self) -> list[bytes]:
        """End of stream (or of an utterance): pad the last partial frame with silence and drain libopus."""
        out: list[bytes] = []
        if len(self._pending):
            pad = np.zeros(self.frame_len - len(self._pending), dtype=np.int16)
            out += self._encode(np.concatenate([self._pending, pad]))
            self._pending = np.zeros(0, dtype=np.int16)
        return out
