"""The caller's recent audio, kept per session so hybrid mode can hand an utterance to a speech-in LLM.

Hybrid mode lets STT decide the turn (VAD + endpointing) but does not wait for its words: at the
endpoint the orchestrator needs the utterance's own audio, from speech start to speech end, as STT
heard it. This buffer keeps exactly the bytes sent to STT (after the audio edge: Opus decoded, noise
suppressed), addressed by STT's stream offsets, so `SpeechEvent.audio_offset_ms` cuts the right span
with no second clock. It is a bounded ring of the messages themselves: memory per session is at most
`keep_ms` of audio, and old audio leaves by whole messages (no copying of the whole buffer per message).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from voxgrid.audio import AudioSpec, StreamResampler, decode, encode, pcm16_spec
from voxgrid.v1 import audio_pb2, llm_pb2

# Audio kept before the VAD's speech start and after its speech end: VADs fire a little late on soft
# onsets and a word's tail can sit under the end offset; the encoder hears silence as silence.
PRE_ROLL_MS = 200.0
TAIL_MS = 150.0


class UtteranceAudio:
    """A ring of the audio sent on the current STT stream, cut by STT's offsets (ms on that stream)."""

    def __init__(self, spec: AudioSpec, keep_ms: float) -> None:
        self.spec = spec
        self.keep_bytes = spec.bytes_for_ms(keep_ms + PRE_ROLL_MS + TAIL_MS)
        self._chunks: deque[tuple[int, bytes]] = deque()  # (byte offset on the STT stream, bytes)
        self._end = 0  # bytes sent on the current STT stream

    def append(self, data: bytes) -> None:
        self._chunks.append((self._end, data))
        self._end += len(data)
        while self._chunks and self._end - (self._chunks[0][0] + len(self._chunks[0][1])) >= self.keep_bytes:
            self._chunks.popleft()

    def restart(self) -> None:
        """A new STT stream counts its offsets from 0 again: audio of the old one can no longer be addressed."""
        self._chunks.clear()
        self._end = 0

    @property
    def end(self) -> int:
        """Bytes sent on the current STT stream."""
        return self._end

    def cut(self, start_ms: float, end_ms: float, max_ms: float) -> tuple[bytes, float]:
        """The bytes from `start_ms` - pre-roll to `end_ms` + tail, at most the newest `max_ms` of them; and how
        many ms of the asked span were lost (older than the ring, or over `max_ms`)."""
        want_from = max(0.0, start_ms - PRE_ROLL_MS)
        want_to = min(self.spec.duration_ms(self._end), end_ms + TAIL_MS)
        lo = max(self._at(want_from), self._at(want_to - max_ms), self._chunks[0][0] if self._chunks else self._end)
        hi = self._at(want_to)
        parts = []
        for offset, data in self._chunks:
            if offset + len(data) <= lo or offset >= hi:
                continue
            parts.append(data[max(0, lo - offset):hi - offset])
        out = b"".join(parts)
        lost = max(0.0, (want_to - want_from) - self.spec.duration_ms(len(out)))
        return out, lost

    def _at(self, ms: float) -> int:
        """Byte offset of `ms`, on a sample boundary, within what was sent."""
        per = self.spec.bytes_per_sample
        return min(self._end, max(0, int(self.spec.bytes_for_ms(max(0.0, ms)) // per * per)))


def clip_for_model(data: bytes, spec: AudioSpec, speech_input: llm_pb2.SpeechInputSpec) -> llm_pb2.AudioClip:
    """The utterance as an `AudioClip` the model takes: as is when its encoding is accepted and its rate is the
    model's, else PCM16 at the model's rate (one conversion here, through the audio-format layer, instead of
    shipping more bytes than the model hears)."""
    rate = speech_input.sample_rate_hz or spec.sample_rate_hz
    accepted = set(speech_input.encodings) or {audio_pb2.AUDIO_ENCODING_PCM16}
    if spec.encoding in accepted and spec.sample_rate_hz == rate:
        return llm_pb2.AudioClip(format=spec.to_proto(), data=data)
    samples = decode(data, spec)
    if spec.sample_rate_hz != rate:
        samples = StreamResampler(spec.sample_rate_hz, rate).process(samples, last=True)
    target = pcm16_spec(rate)
    return llm_pb2.AudioClip(format=target.to_proto(), data=encode(np.asarray(samples, np.float32), target))
