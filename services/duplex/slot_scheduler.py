"""The slot scheduler: one worker thread steps every live conversation together, once per model frame.

A `BatchedDuplexModel` has a fixed number of slots. Sessions take a free slot (none free:
`SlotsExhausted`), push caller audio from the event loop, and receive one `DuplexFrame` per model frame.
The worker thread owns the model: on each tick (every frame_ms, or back to back when a step takes longer
than a frame) it takes one frame of audio per active slot, feeds silence to a slot whose audio has not
arrived (counted in `frames_late`: the batch never waits for one client), steps the model once, and
hands each session its frame through the event loop. Nothing here runs model code on the event loop.

A session joins the batch with its first full frame of audio (its slot is reset then), leaves when it
closes (its slot is masked and free at once), and ends cleanly after `end()` once its buffered audio
has been stepped. A client whose audio is missing for `stall_timeout_s` of consecutive model frames (or
that sends none at all for that long after joining) is ended with `SessionFailure("stalled")`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from voxgrid.services.duplex.engines.base import BatchedDuplexModel
from voxgrid.services.duplex.engines.slot_sampling import SlotSampling

from voxgrid import metrics
from voxgrid.audio import FrameBuffer

log = logging.getLogger(__name__)
SERVICE = "duplex"


class SlotsExhausted(Exception):
    """Every slot of this replica is taken."""


class SessionFailure(Exception):
    """A session ended by the server; `kind` is stalled, ahead or stopping (the servicer maps it to a status)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class DuplexFrame:
    """One model frame of one session."""

    pcm: np.ndarray  # float32 at the model's rate, frame_size samples
    text: str
    text_token: int  # -1 while the model's output is still in its delay
    frame_index: int
    step_ms: float
    frames_late: int


_END = object()


class SlotSession:
    """A conversation holding one slot. Audio in from the event loop; frames out through `frames()`."""

    def __init__(
        self, scheduler: SlotScheduler, slot: int, session_id: str, sampling: SlotSampling,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.scheduler = scheduler
        self.slot = slot
        self.session_id = session_id
        self.sampling = sampling
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._input = FrameBuffer(scheduler.model.frame_size)
        self._frames_ready: deque[np.ndarray] = deque()
        # Guarded by scheduler.lock:
        self.started = False
        self.input_ended = False
        self.closed = False
        self.frames_late = 0
        self.late_streak = 0  # consecutive frames fed silence
        self.frames_out = 0
        self.last_audio_at = time.monotonic()

    # --- event loop side ----------------------------------------------------------------------------
    def push_audio(self, samples: np.ndarray) -> None:
        """Caller audio at the model's rate, any length."""
        sched = self.scheduler
        with sched.lock:
            if self.closed or self.input_ended:
                return
            self._frames_ready.extend(self._input.push(samples))
            self.last_audio_at = time.monotonic()
            ahead_s = len(self._frames_ready) * sched.model.frame_ms / 1000.0
            sched.cond.notify()
        if ahead_s > sched.max_buffered_s:
            raise SessionFailure(
                "ahead", f"the client is {ahead_s:.1f} s of audio ahead of the model (limit "
                f"{sched.max_buffered_s:g} s): send audio at real-time pace",
            )

    def end(self) -> None:
        """No more audio: what is buffered (the last partial frame padded with silence) is still answered."""
        with self.scheduler.lock:
            if self.input_ended:
                return
            if len(self._input):
                pad = self._input.frame_len - len(self._input)
                self._frames_ready.extend(self._input.push(np.zeros(pad, dtype=np.float32)))
            self.input_ended = True
            self.scheduler.cond.notify()

    def close(self) -> None:
        """Leave now (disconnect, cancel, error): the slot is masked out and free for the next session."""
        self.scheduler.release(self)

    async def frames(self) -> AsyncIterator[DuplexFrame]:
        """One frame per model step until the session ends; raises SessionFailure if the server ended it."""
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, DuplexFrame)
            yield item

    # --- worker side (call with scheduler.lock held) ------------------------------------------------
    def _take_frame(self) -> np.ndarray | None:
        return self._frames_ready.popleft() if self._frames_ready else None

    def _has_frame(self) -> bool:
        return bool(self._frames_ready)

    def _post(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            self.closed = True


class SlotScheduler:
    """Owns the model and the worker thread; sessions are opened and released from the event loop."""

    def __init__(
        self, model: BatchedDuplexModel, *, stall_timeout_s: float = 10.0, max_buffered_s: float = 30.0
    ) -> None:
        self.model = model
        self.capacity = model.batch_size
        self.stall_timeout_s = stall_timeout_s
        self.max_buffered_s = max_buffered_s
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self._slots: list[SlotSession | None] = [None] * self.capacity
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.steps = 0
        self._m_step = metrics.histogram(SERVICE, "step_seconds", "Wall time of one batched model step.")
        self._m_rtf = metrics.rtf_histogram(SERVICE)
        self._m_late = metrics.counter(
            SERVICE, "frames_late", "Frames fed silence because the client's audio was late."
        )
        self._m_active = metrics.gauge(SERVICE, "slots_active", "Slots stepped in the latest batch.")
        self._m_capacity = metrics.gauge(SERVICE, "slots_capacity", "Slots in the batch (conversations per replica).")
        self._m_audio = metrics.histogram(
            SERVICE, "session_audio_seconds", "Conversation length in model audio per finished session.",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
        )

    # --- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load and warm the model in the worker thread; returns when it is ready to step."""
        self._m_capacity.set(self.capacity)
        self._thread = threading.Thread(target=self._run, name="duplex-slots", daemon=True)
        self._thread.start()
        await asyncio.wrap_future(self._ready)

    async def stop(self) -> None:
        with self.lock:
            self._stopping = True
            sessions = [s for s in self._slots if s is not None]
            self._slots = [None] * self.capacity
            for s in sessions:
                s.closed = True
                s._post(SessionFailure("stopping", "the server is shutting down: reconnect to another replica"))
            self.cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    # --- sessions -----------------------------------------------------------------------------------
    def open_session(self, sampling: SlotSampling, session_id: str = "") -> SlotSession:
        loop = asyncio.get_running_loop()
        with self.lock:
            if self._stopping:
                raise SessionFailure("stopping", "the server is shutting down: reconnect to another replica")
            for slot, holder in enumerate(self._slots):
                if holder is None:
                    session = SlotSession(self, slot, session_id, sampling, loop)
                    self._slots[slot] = session
                    return session
        raise SlotsExhausted(
            f"all {self.capacity} conversation slots of this replica are taken: retry on another replica or later"
        )

    def release(self, session: SlotSession) -> None:
        with self.lock:
            if self._slots[session.slot] is session:
                self._slots[session.slot] = None
                self._m_audio.observe(session.frames_out * self.model.frame_ms / 1000.0)
            session.closed = True
            self.cond.notify()

    def active_slots(self) -> int:
        with self.lock:
            return sum(s is not None for s in self._slots)

    # --- worker thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.model.load()
            self.model.warmup()
        except BaseException as exc:
            log.exception("duplex model failed to load")
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        frame_s = self.model.frame_ms / 1000.0
        next_tick: float | None = None
        while True:
            with self.lock:
                if self._stopping:
                    return
                if next_tick is not None:
                    delay = next_tick - time.monotonic()
                    if delay > 0:
                        self.cond.wait(delay)
                        continue
                batch = self._collect()
                if not batch:
                    next_tick = None
                    self.cond.wait(frame_s)
                    continue
            started = time.monotonic()
            next_tick = max(started, (next_tick or started)) + frame_s
            self._step(batch, started)

    def _collect(self) -> list[tuple[SlotSession, np.ndarray]]:
        """Pick this step's input per slot (lock held): (session, frame)."""
        now = time.monotonic()
        frame_s = self.model.frame_ms / 1000.0
        batch = []
        for slot, s in enumerate(self._slots):
            if s is None:
                continue
            if not s.started:
                if not s._has_frame():
                    if s.input_ended:
                        self._finish(slot, s, None)
                    elif now - s.last_audio_at > self.stall_timeout_s:
                        self._finish(slot, s, self._stalled())
                    continue
                s.started = True
                self.model.configure_slot(slot, s.sampling)
                batch.append((s, s._take_frame()))
                continue
            frame = s._take_frame()
            if frame is None:
                if s.input_ended:
                    self._finish(slot, s, None)
                    continue
                # Stalling is counted in model frames, not wall time: a slow step never ends a session.
                if (s.late_streak + 1) * frame_s > self.stall_timeout_s:
                    self._finish(slot, s, self._stalled())
                    continue
                frame = np.zeros(self.model.frame_size, dtype=np.float32)
                s.frames_late += 1
                s.late_streak += 1
                self._m_late.inc()
            else:
                s.late_streak = 0
            batch.append((s, frame))
        return batch

    def _stalled(self) -> SessionFailure:
        return SessionFailure(
            "stalled", f"no audio for {self.stall_timeout_s:g} s: send audio continuously at real-time pace "
            "(silence included), or send `end` to finish",
        )

    def _finish(self, slot: int, s: SlotSession, error: SessionFailure | None) -> None:
        self._slots[slot] = None
        s.closed = True
        self._m_audio.observe(s.frames_out * self.model.frame_ms / 1000.0)
        s._post(error if error is not None else _END)

    def _step(self, batch: list[tuple[SlotSession, np.ndarray]], started: float) -> None:
        model = self.model
        pcm = np.zeros((model.batch_size, model.frame_size), dtype=np.float32)
        active = np.zeros(model.batch_size, dtype=bool)
        for s, frame in batch:
            pcm[s.slot] = frame
            active[s.slot] = True
        try:
            out = model.step(pcm, active)
        except Exception:
            log.exception("batched step failed: ending the %d sessions in it", len(batch))
            with self.lock:
                for s, _ in batch:
                    if self._slots[s.slot] is s:
                        self._finish(s.slot, s, SessionFailure("internal", "the model step failed"))
            return
        step_s = time.monotonic() - started
        self.steps += 1
        self._m_step.observe(step_s)
        self._m_rtf.observe(step_s / (model.frame_ms / 1000.0))
        self._m_active.set(len(batch))
        with self.lock:
            for s, _ in batch:
                if s.closed:
                    continue
                ready = bool(out.has_output[s.slot])
                token = int(out.text_tokens[s.slot]) if ready else -1
                s._post(DuplexFrame(
                    pcm=out.pcm[s.slot].copy() if ready else np.zeros(model.frame_size, dtype=np.float32),
                    text=model.text_piece(token) if ready else "",
                    text_token=token,
                    frame_index=s.frames_out,
                    step_ms=step_s * 1000.0,
                    frames_late=s.frames_late,
                ))
                s.frames_out += 1
