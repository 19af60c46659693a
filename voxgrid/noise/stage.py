"""One session's noise-suppression stage: any caller rate in, the same rate out, the engine's rate inside.

The stage resamples to the engine's rate, cuts fixed frames, suppresses, and resamples back, all with
state carried across chunks, so chunk boundaries leave no clicks and the engine keeps its noise estimate
for the whole call. It delays audio by at most one engine frame (10 ms) plus the resamplers' filter delay
(about 1 ms each way), plus the engine's own algorithmic delay (DeepFilterNet: 30 ms): that one is trimmed
from the start of the output, so output sample i is still input sample i, and flushed at the end of the
stream, so nothing the caller said is lost. Every frame's compute time goes into one histogram, labelled by
engine.

The stage is synchronous and not thread-safe: a session either calls it on its event loop (DSP engines) or
hands it, whole, to the suppression worker (voxgrid/noise/worker.py), which calls it from one thread at a
time.
"""

from __future__ import annotations

import time

import numpy as np

from voxgrid import metrics
from voxgrid.audio import FrameBuffer, StreamResampler, to_pcm16
from voxgrid.noise.engines import NoiseEngine, create_engine

# Per-frame cost is microseconds to a millisecond: buckets for that range, not the latency layout.
FRAME_COST_BUCKETS: tuple[float, ...] = (
    5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2,
)


def frame_cost_histogram():  # type: ignore[no-untyped-def]
    return metrics.histogram(
        "edge", "noise_suppression_frame_seconds",
        "Compute seconds to suppress noise in one engine frame (10 ms of audio).",
        labels=("engine",), buckets=FRAME_COST_BUCKETS,
    )


class NoiseStage:
    """Streaming suppression for one stream at `rate`; `process` may return fewer or more samples than given
    (the stage buffers up to one engine frame), and `flush` returns what is left at the end of the stream."""

    def __init__(self, rate: int, engine: str | NoiseEngine = "") -> None:
        self.engine = engine if isinstance(engine, NoiseEngine) else create_engine(engine, rate)
        self.rate = rate
        self._to_engine = StreamResampler(rate, self.engine.rate)
        self._from_engine = StreamResampler(self.engine.rate, rate)
        self._frames = FrameBuffer(self.engine.frame_len)
        self._cost = frame_cost_histogram().labels(engine=self.engine.name)
        self.frames_processed = 0
        self.compute_s = 0.0
        self._fed = 0  # samples at the engine's rate framed so far
        self._emitted = 0  # engine output samples passed on (after the delay was trimmed)
        self._skip = self.engine.delay  # engine output still to drop: its algorithmic delay
        self.closed = False

    @property
    def is_speech(self) -> bool | None:
        """The engine's speech flag for the latest frame (None for engines without one)."""
        return self.engine.is_speech

    def _suppress(self, frames: list[np.ndarray]) -> np.ndarray:
        if not frames:
            return np.zeros(0, dtype=np.float32)
        out = []
        for f in frames:
            t0 = time.perf_counter()
            y = self.engine.process(to_pcm16(f))
            dt = time.perf_counter() - t0
            self._cost.observe(dt)
            self.compute_s += dt
            out.append(y)
        self.frames_processed += len(frames)
        y = np.concatenate(out).astype(np.float32) / 32768.0
        if self._skip:
            cut = min(self._skip, len(y))
            y, self._skip = y[cut:], self._skip - cut
        self._emitted += len(y)
        return y

    def _engine_rate(self, samples: np.ndarray, last: bool = False) -> list[np.ndarray]:
        x = self._to_engine.process(samples, last=last)
        self._fed += len(x)
        return self._frames.push(x)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """float32 at `rate` in, suppressed float32 at `rate` out (streaming)."""
        return self._from_engine.process(self._suppress(self._engine_rate(samples)))

    def flush(self) -> np.ndarray:
        """End of stream: drain the resampler, the partial frame and the engine's delay (zeros pushed through),
        keep exactly as many samples as went in, and free the engine."""
        frames = self._engine_rate(np.zeros(0, dtype=np.float32), last=True)
        short = self._fed + self.engine.delay - self.frames_processed * self.engine.frame_len - sum(map(len, frames))
        if short > 0:
            n = -(-short // self.engine.frame_len) * self.engine.frame_len - len(self._frames)
            frames += self._frames.push(np.zeros(n, dtype=np.float32))
        want = self._fed - self._emitted  # the input's length, less what was passed on already
        y = self._suppress(frames)[: max(want, 0)]
        out = self._from_engine.process(y, last=True)
        self.close()
        return out

    def close(self) -> None:
        """Free the engine without flushing (idempotent): a session that ends mid-stream."""
        if not self.closed:
            self.closed = True
            self.engine.close()
