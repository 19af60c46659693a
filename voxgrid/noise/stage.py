"""One session's noise-suppression stage: any caller rate in, the same rate out, the engine's rate inside.

The stage resamples to the engine's rate, cuts fixed frames, suppresses, and resamples back, all with
state carried across chunks, so chunk boundaries leave no clicks and the engine keeps its noise estimate
for the whole call. It delays audio by at most one engine frame (10 ms) plus the resamplers' filter delay
(about 1 ms each way). Every frame's compute time goes into one histogram, labelled by engine.
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
        return np.concatenate(out).astype(np.float32) / 32768.0

    def process(self, samples: np.ndarray) -> np.ndarray:
        """float32 at `rate` in, suppressed float32 at `rate` out (streaming)."""
        frames = self._frames.push(self._to_engine.process(samples))
        return self._from_engine.process(self._suppress(frames))

    def flush(self) -> np.ndarray:
        """End of stream: drain the resampler and the partial frame (zero-padded), and free the engine."""
        tail = self._to_engine.process(np.zeros(0, dtype=np.float32), last=True)
        frames = self._frames.push(tail)
        pending = len(self._frames)
        if pending:
            frames += self._frames.push(np.zeros(self.engine.frame_len - pending, dtype=np.float32))
        y = self._suppress(frames)
        if pending:
            y = y[: len(y) - (self.engine.frame_len - pending)]
        out = self._from_engine.process(y, last=True)
        self.engine.close()
        return out
