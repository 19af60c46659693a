"""One decode scheduler per engine: every live session's decode jobs go through it.

A worker thread owns the engine. It takes what is due, previews first (cheap, and an agent's speculative
answer starts from them), then finals (a user is waiting on them), and runs it as one batch
(`max_batch_size` rows); partials only run when no preview or final waits. The event loop only
submits jobs and awaits their futures, so model work never blocks it. Removing a session's queued jobs
is O(queue) and immediate; a job already running finishes and its result is ignored.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from voxgrid.services.stt.engines.base import DecodeRequest, Hypothesis, SttEngine

log = logging.getLogger(__name__)


@dataclass(eq=False)
class DecodeJob:
    session_id: str
    request: DecodeRequest
    seq: int
    submitted_at: float = field(default_factory=time.perf_counter)
    future: concurrent.futures.Future[Hypothesis] = field(default_factory=concurrent.futures.Future)

    @property
    def final(self) -> bool:
        return self.request.final


@dataclass
class BatchStats:
    size: int
    finals: int
    decode_s: float
    audio_s: float
    queue_wait_s: float


class DecodeScheduler:
    def __init__(
        self,
        engine: SttEngine,
        *,
        max_batch_size: int = 8,
        on_queue_depth: Callable[[int], None] | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.engine = engine
        self.max_batch_size = max(1, max_batch_size)
        self._on_queue_depth = on_queue_depth
        self.batch_listeners: list[Callable[[BatchStats], None]] = [on_batch] if on_batch else []
        self._queue: list[DecodeJob] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.running_jobs: list[DecodeJob] = []

    # --- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="stt-decode", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for job in self._queue:
                job.future.cancel()
            self._queue.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self._report_depth(0)

    # --- what sessions call -----------------------------------------------------------------------------
    def submit(self, session_id: str, request: DecodeRequest) -> DecodeJob:
        job = DecodeJob(session_id, request, next(self._seq))
        with self._cond:
            if self._stopping:
                raise RuntimeError("decode scheduler is stopped")
            self._queue.append(job)
            depth = len(self._queue)
            self._cond.notify()
        self._report_depth(depth)
        return job

    def cancel(self, job: DecodeJob) -> None:
        """Drop a job if it has not started; a running one completes and is ignored by its session."""
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
            depth = len(self._queue)
        job.future.cancel()
        self._report_depth(depth)

    def drop_session(self, session_id: str) -> int:
        """Remove every queued job of a session (it ended or its client went away); returns how many."""
        with self._cond:
            dropped = [j for j in self._queue if j.session_id == session_id]
            self._queue = [j for j in self._queue if j.session_id != session_id]
            depth = len(self._queue)
        for job in dropped:
            job.future.cancel()
        self._report_depth(depth)
        return len(dropped)

    def queued(self, session_id: str | None = None) -> int:
        with self._cond:
            return sum(1 for j in self._queue if session_id is None or j.session_id == session_id)

    # --- worker -----------------------------------------------------------------------------------------
    def _report_depth(self, depth: int) -> None:
        if self._on_queue_depth is not None:
            self._on_queue_depth(depth)

    def _next_batch(self) -> list[DecodeJob]:
        previews = [j for j in self._queue if j.request.preview]
        pool = previews or [j for j in self._queue if j.final] or self._queue
        batch = sorted(pool, key=lambda j: j.seq)[: self.max_batch_size]
        taken = {id(j) for j in batch}
        self._queue = [j for j in self._queue if id(j) not in taken]
        return [j for j in batch if j.future.set_running_or_notify_cancel()]

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                batch = self._next_batch()
                depth = len(self._queue)
                self.running_jobs = batch
            self._report_depth(depth)
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = self.engine.decode([j.request for j in batch])
            except Exception as exc:  # a broken batch fails its jobs, never the worker
                log.exception("decode batch of %d failed", len(batch))
                for job in batch:
                    job.future.set_exception(exc)
                continue
            finally:
                with self._cond:
                    self.running_jobs = []
            for job, hyp in zip(batch, results, strict=True):
                job.future.set_result(hyp)
            audio_s = sum(len(j.request.audio) for j in batch) / self.engine.sample_rate
            wait = sum(started - j.submitted_at for j in batch) / len(batch)
            stats = BatchStats(len(batch), sum(j.final for j in batch), time.perf_counter() - started, audio_s, wait)
            for listener in self.batch_listeners:
                listener(stats)
