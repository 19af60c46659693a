"""The only code that touches the model: worker threads pulling synthesis jobs, earliest deadline first.

Every stream submits one job per text span; a job's deadline is the wall-clock moment its listener
runs out of audio (now, for an utterance that has not started: first audio is the most urgent thing
there is). With many streams on few cores this keeps every stream ahead of playback before any one
stream races far ahead. Cancelled jobs are dropped when popped and stop between the pieces an engine
yields, so cancel costs at most the piece in progress.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from voxgrid.services.tts.engines.base import TtsEngine

log = logging.getLogger("voxgrid.tts.scheduler")


@dataclass(order=True)
class SynthesisJob:
    """One span to speak. Callbacks run on the worker thread: they must only hand results over."""

    deadline: float
    seq: int = field(init=False, default=0)
    text: str = field(compare=False, default="")
    voice: str = field(compare=False, default="")
    speed: float = field(compare=False, default=1.0)
    cancelled: threading.Event = field(compare=False, default_factory=threading.Event)
    on_audio: Callable[[np.ndarray], None] = field(compare=False, default=lambda a: None)
    on_done: Callable[[float, BaseException | None], None] = field(compare=False, default=lambda s, e: None)


class SynthesisScheduler:
    """A fixed set of worker threads over one engine (onnxruntime sessions are safe to run concurrently)."""

    def __init__(self, engine: TtsEngine, threads: int = 1) -> None:
        self.engine = engine
        self._heap: list[SynthesisJob] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._run, name=f"tts-synth-{i}", daemon=True) for i in range(max(1, threads))
        ]
        self.jobs_run = 0
        self.jobs_dropped = 0
        self.busy = 0

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def submit(self, job: SynthesisJob) -> None:
        with self._cond:
            if self._stopping:
                raise RuntimeError("the synthesis scheduler is stopped")
            job.seq = next(self._seq)
            heapq.heappush(self._heap, job)
            self._cond.notify()

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._heap)

    def stop(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            for job in self._heap:
                job.cancelled.set()
            self._cond.notify_all()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout_s)

    def _next(self) -> SynthesisJob | None:
        with self._cond:
            while True:
                while self._heap and self._heap[0].cancelled.is_set():
                    heapq.heappop(self._heap)
                    self.jobs_dropped += 1
                if self._heap:
                    self.busy += 1
                    return heapq.heappop(self._heap)
                if self._stopping:
                    return None
                self._cond.wait()

    def _run(self) -> None:
        while (job := self._next()) is not None:
            compute = 0.0
            error: BaseException | None = None
            try:
                t0 = time.perf_counter()
                pieces = self.engine.synthesize(job.text, job.voice, job.speed)
                for piece in pieces:
                    compute += time.perf_counter() - t0
                    if job.cancelled.is_set():
                        break
                    job.on_audio(piece)
                    t0 = time.perf_counter()
                else:
                    compute += time.perf_counter() - t0
            except Exception as exc:  # an engine failure ends this job (and its stream), not the worker
                log.exception("synthesis failed for %r", job.text[:80])
                error = exc
            finally:
                with self._cond:
                    self.busy -= 1
                    self.jobs_run += 1
            job.on_done(compute, error)
