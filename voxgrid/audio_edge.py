"""The audio edge of a conversation: what a session does to audio before any backend hears it, and after.

`CallerEdge` takes each caller message in the session's input format and returns the bytes the speech
backends (STT, the duplex model) receive: unchanged when there is nothing to do (the backend decodes the
client's own format, as before), or PCM16 at the caller's rate after Opus decoding and/or noise
suppression. `AgentEdge` does the reverse for the agent's voice: the TTS is asked for PCM16 when the
client wants Opus, and each TTS chunk becomes 20 ms Opus packets, one per message.

Every mode's session holds one of each, so suppression and Opus work the same in pipeline and duplex.
Neural suppressors (RNNoise, DeepFilterNet) run on the shared suppression worker (voxgrid/noise/worker.py)
when the session gives the edge a `deliver` callback: `feed` then returns nothing for that message and the
suppressed audio arrives, in order, through `deliver` on the session's loop; `ready()` is the back-pressure
the session's reader awaits, `finish()` flushes the tail at the end of the caller's audio.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from voxgrid.audio import OPUS, AudioIn, AudioSpec, decode, encode, pcm16_spec
from voxgrid.echo import EchoCanceller
from voxgrid.noise import NoiseStage
from voxgrid.noise.worker import SuppressedStream, shared_worker
from voxgrid.v1 import agent_pb2

DEFAULT_ECHO_TAIL_MS = 300  # covers client playout + 40-120 ms acoustic delay + uplink, at ~0.1 ms per 10 ms
_ENGINE_BY_ENUM = {
    agent_pb2.EdgeAudioConfig.NOISE_SUPPRESSOR_DEFAULT: "",
    agent_pb2.EdgeAudioConfig.NOISE_SUPPRESSOR_SPEEX: "speex",
    agent_pb2.EdgeAudioConfig.NOISE_SUPPRESSOR_WEBRTC: "webrtc",
    agent_pb2.EdgeAudioConfig.NOISE_SUPPRESSOR_RNNOISE: "rnnoise",
    agent_pb2.EdgeAudioConfig.NOISE_SUPPRESSOR_DEEPFILTERNET: "dfn",
}


def suppressor_for(edge: agent_pb2.EdgeAudioConfig) -> str | None:
    """The engine a session's edge_audio asks for: None = off, "" = the default engine, else its name."""
    if not edge.noise_suppression:
        return None
    if edge.noise_suppressor not in _ENGINE_BY_ENUM:
        raise ValueError(f"edge_audio.noise_suppressor {edge.noise_suppressor} is unknown: use SPEEX, WEBRTC, "
                         "RNNOISE, DEEPFILTERNET or DEFAULT")
    return _ENGINE_BY_ENUM[edge.noise_suppressor]


def echo_tail_ms(edge: agent_pb2.EdgeAudioConfig) -> int | None:
    """The echo canceller's tail a session's edge_audio asks for: None = echo cancellation off."""
    if not edge.echo_cancellation:
        return None
    return edge.echo_tail_ms or DEFAULT_ECHO_TAIL_MS


def check_edge_config(edge: agent_pb2.EdgeAudioConfig) -> None:
    """Refuse, before any backend is opened, what this build cannot do (ValueError names the field)."""
    from voxgrid.echo import EchoUnavailable, SpeexEcho
    from voxgrid.noise import NoiseEngineUnavailable, create_engine

    if edge.echo_tail_ms and not 50 <= edge.echo_tail_ms <= 1000:
        raise ValueError(f"edge_audio.echo_tail_ms {edge.echo_tail_ms} is out of range: use 50-1000 (0 = "
                         f"{DEFAULT_ECHO_TAIL_MS})")
    if edge.echo_cancellation:
        try:
            SpeexEcho(16000, 100).close()
        except EchoUnavailable as exc:
            raise ValueError(f"edge_audio.echo_cancellation: {exc}") from exc

    name = suppressor_for(edge)
    if name is not None:
        try:
            create_engine(name, 16000).close()
        except NoiseEngineUnavailable as exc:
            raise ValueError(f"edge_audio.noise_suppressor: {exc}") from exc


class CallerEdge:
    """One session's caller side: wire message in, backend bytes out (in `backend_spec`)."""

    def __init__(self, in_spec: AudioSpec, suppressor: str | None = None, echo: EchoCanceller | None = None,
                 deliver: Callable[[bytes], None] | None = None) -> None:
        """`deliver` (on a running loop): neural suppressors go to the shared worker and their output
        arrives through it; without it every engine runs inline in `feed` (offline tools, benchmarks)."""
        self.in_spec = in_spec
        self.received_ms = 0.0
        self.echo = echo  # echo cancellation runs first: the suppressor then sees no echo to mistake for noise
        self.passthrough = in_spec.encoding != OPUS and suppressor is None and echo is None
        self.backend_spec = in_spec if self.passthrough else pcm16_spec(in_spec.sample_rate_hz)
        self.noise = None if suppressor is None else NoiseStage(in_spec.sample_rate_hz, suppressor)
        self._opus = AudioIn(in_spec, in_spec.sample_rate_hz) if in_spec.encoding == OPUS else None
        self.offloaded: SuppressedStream | None = None
        self._finishing = False
        if self.noise is not None and self.noise.engine.offload and deliver is not None:
            spec = self.backend_spec
            self.offloaded = shared_worker().stream(self.noise, lambda y: deliver(encode(y, spec)))

    def message_ms(self, data: bytes) -> float:
        """Length of one caller message (validates it: whole samples, or one Opus packet)."""
        return self.in_spec.message_ms(data)

    def feed(self, data: bytes) -> bytes:
        """The backend's bytes for one caller message (may be empty while a frame fills)."""
        self.received_ms += self.message_ms(data)
        if self.passthrough:
            return data
        x = self._opus.feed(data) if self._opus is not None else decode(data, self.in_spec)
        if self.echo is not None:
            x = self.echo.process(x)
        if self.offloaded is not None:
            self.offloaded.submit(x)
            return b""
        if self.noise is not None:
            x = self.noise.process(x)
        return encode(x, self.backend_spec)

    async def ready(self) -> None:
        """Back-pressure: wait while the suppression worker holds too much of this caller's audio."""
        if self.offloaded is not None:
            await self.offloaded.ready()

    def finish(self, then: Callable[[], None]) -> bool:
        """End of the caller's audio with an offloaded suppressor: its tail is delivered, then `then` runs
        (on the loop). False when nothing is offloaded (or it was already finished): go on at once."""
        if self.offloaded is None or self.offloaded.closed or self._finishing:
            return False
        self._finishing = True
        x = self._opus.flush() if self._opus is not None else np.zeros(0, np.float32)
        if self.echo is not None:
            x = np.concatenate([self.echo.process(x), self.echo.flush()])
        self.offloaded.submit(x)
        self.offloaded.flush().add_done_callback(lambda _: then())
        return True

    def close(self) -> None:
        """The session is over: drop the suppressor's queued audio and free its engine (idempotent)."""
        if self.offloaded is not None:
            self.offloaded.close()
        elif self.noise is not None:
            self.noise.close()

    def flush(self) -> bytes:
        """End of the caller's audio: what the decoder and the suppressor still hold."""
        if self.offloaded is not None:
            self.finish(lambda: None)  # the tail arrives through `deliver`
            return b""
        if self.passthrough:
            return b""
        x = self._opus.flush() if self._opus is not None else np.zeros(0, np.float32)
        if self.echo is not None:
            x = np.concatenate([self.echo.process(x), self.echo.flush()])
        if self.noise is not None:
            x = np.concatenate([self.noise.process(x), self.noise.flush()])
        return encode(x, self.backend_spec)


class AgentEdge:
    """One session's agent side: the TTS speaks `backend_spec`; `packets` turns its chunks into messages.

    For Opus, the encoder runs continuously through one TTS utterance and is flushed (padded) at its end,
    so every utterance starts on a packet boundary; audio still pending from an utterance that was cut off
    (barge-in) is dropped when the next one starts."""

    def __init__(self, out_spec: AudioSpec) -> None:
        self.out_spec = out_spec
        self.passthrough = out_spec.encoding != OPUS
        self.backend_spec = out_spec if self.passthrough else pcm16_spec(out_spec.sample_rate_hz)
        self._opus = None
        if not self.passthrough:
            from voxgrid.opus import OpusEncoder

            self._opus = OpusEncoder(out_spec.sample_rate_hz, out_spec.opus_bitrate_bps)
        self._utterance: int | None = None
        self._utterance_ms = 0.0

    def packets(self, data: bytes, utterance: int = 0, last: bool = False) -> list[tuple[bytes, float]]:
        """Client messages for one TTS chunk of `utterance`, each with its offset in the utterance (ms) when the
        chunk is re-packetised (Opus: 20 ms packets; `last` pads the final one at the utterance's end). PCM and
        G.711 chunks pass through as they are, with offset -1 (keep the TTS's own offset)."""
        if self._opus is None:
            return [(data, -1.0)] if data else []
        if utterance != self._utterance:
            self._opus.discard()
            self._utterance, self._utterance_ms = utterance, 0.0
        out = self._opus.encode(decode(data, self.backend_spec)) if data else []
        if last:
            out += self._opus.flush()
        result = []
        for p in out:
            result.append((p, self._utterance_ms))
            self._utterance_ms += self.message_ms(p)
        return result

    def message_ms(self, data: bytes) -> float:
        return self.out_spec.message_ms(data)


def echo_canceller(edge: agent_pb2.EdgeAudioConfig, in_spec: AudioSpec, out_spec: AudioSpec) -> EchoCanceller | None:
    """The session's echo stage when edge_audio asks for one: caller audio at its own rate, the agent's audio
    (in the client's output format, as played) as the reference."""
    tail = echo_tail_ms(edge)
    if tail is None:
        return None
    tracking = edge.echo_delay_tracking if edge.HasField("echo_delay_tracking") else True
    return EchoCanceller(in_spec.sample_rate_hz, out_spec, tail, align=tracking)
