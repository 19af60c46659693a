"""One TTS stream: utterances of streamed text in, ordered audio chunks with marks out, cancel at once.

All state lives on the event loop and changes in one place (`_handle`); the synthesis worker threads
only post results into the inbox. `events()` is pulled by the gRPC writer, so audio is cut into chunks
lazily: when the client reads slowly, nothing piles up beyond `lookahead` spans per stream (bounded
memory for huge texts), and a cancel read between two chunks stops the audio after the chunk being
written. Utterances are spoken one after another: text after a flush starts the next utterance, which
waits for the previous one's `done`.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
from voxgrid.services.tts import metrics
from voxgrid.services.tts.chunker import TextChunker
from voxgrid.services.tts.engines.base import Voice
from voxgrid.services.tts.marks import Mark, MarkLedger
from voxgrid.services.tts.normalize import normalize_for_speech
from voxgrid.services.tts.scheduler import SynthesisJob, SynthesisScheduler

from voxgrid.audio import AudioOut, AudioSpec


@dataclass(frozen=True)
class StreamOptions:
    """Per-stream tuning (settings and config fields)."""

    first_chunk_max_chars: int = 60
    clause_min_chars: int = 100
    max_chunk_chars: int = 300
    chunk_ms: int = 120
    lookahead_spans: int = 2
    max_pending_chars: int = 200_000
    language: str = "en"


@dataclass(frozen=True)
class AudioEvent:
    utterance_id: int
    data: bytes
    mark: Mark
    audio_offset_ms: int


@dataclass(frozen=True)
class DoneEvent:
    utterance_id: int
    cancelled: bool
    audio_ms: int
    spoken_chars: int
    time_to_first_audio_ms: float
    real_time_factor: float


class TextLimitError(Exception):
    """More text is pending than the stream accepts: the message says what to do."""


@dataclass
class _Slot:
    """A span's audio from the engine, waiting to be cut into chunks (in span order)."""

    index: int
    pieces: collections.deque[np.ndarray] = field(default_factory=collections.deque)
    finished: bool = False
    error: BaseException | None = None


class _Utterance:
    def __init__(self, uid: int, opts: StreamOptions, voice: Voice, out_spec: AudioSpec) -> None:
        self.id = uid
        self.chunker = TextChunker(opts.first_chunk_max_chars, opts.clause_min_chars, opts.max_chunk_chars)
        self.ledger = MarkLedger()
        self.audio_out = AudioOut(voice.sample_rate_hz, out_spec)
        self.cancel = threading.Event()
        self.flushed = False
        self.slots: dict[int, _Slot] = {}
        self.next_emit = 0
        self.in_flight = 0
        self.first_text_t: float | None = None
        self.first_audio_t: float | None = None
        self.produced_s = 0.0  # engine audio produced
        self.compute_s = 0.0
        self.out_samples = 0  # output samples sent
        self.ttfa_s = 0.0
        self.last_mark: Mark | None = None
        self.tail_sent = False

    @property
    def exhausted(self) -> bool:
        return self.flushed and self.chunker.pending_chars == 0 and self.in_flight == 0 and not self.slots


class SpeechStream:
    """State of one StreamingSynthesize call."""

    def __init__(self, scheduler: SynthesisScheduler, voice: Voice, speed: float, out_spec: AudioSpec,
                 opts: StreamOptions) -> None:
        self._scheduler = scheduler
        self._voice = voice
        self._speed = speed
        self._spec = out_spec
        self._opts = opts
        self._loop = asyncio.get_running_loop()
        self._inbox: asyncio.Queue[tuple] = asyncio.Queue()
        self._utterances: collections.deque[_Utterance] = collections.deque()
        self._next_id = 1
        self._cancelled: list[_Utterance] = []  # cancelled utterances whose `done` is still to go out
        self._ending = False
        self._closed = False
        self._chunk_samples = max(1, voice.sample_rate_hz * opts.chunk_ms // 1000)
        self._out_bytes_per_ms = out_spec.sample_rate_hz * out_spec.bytes_per_sample / 1000

    # --- requests (called by the servicer's reader task) ------------------------------------------------
    def add_text(self, text: str) -> None:
        if not text:
            return  # an empty delta opens no utterance
        pending = sum(u.chunker.pending_chars for u in self._utterances) + len(text)
        if pending > self._opts.max_pending_chars:
            raise TextLimitError(
                f"{pending} characters are waiting to be spoken, more than this server buffers "
                f"({self._opts.max_pending_chars}): send text as it is produced, or flush and wait for `done`"
            )
        self._inbox.put_nowait(("text", text, time.perf_counter()))

    def flush(self) -> None:
        self._inbox.put_nowait(("flush",))

    def cancel(self) -> None:
        self._inbox.put_nowait(("cancel",))

    def end(self) -> None:
        self._inbox.put_nowait(("end",))

    def stop(self) -> None:
        """End `events()` at once (the servicer found an error in the request stream)."""
        self._inbox.put_nowait(("stop",))

    def close(self) -> None:
        """The client is gone: stop all work of this stream now."""
        self._closed = True
        for u in self._utterances:
            u.cancel.set()
        self._utterances.clear()

    # --- the output side ---------------------------------------------------------------------------------
    async def events(self) -> AsyncIterator[AudioEvent | DoneEvent]:
        """Audio and done events in order; ends after `end` once every utterance is done."""
        try:
            while not self._closed:
                while not self._inbox.empty():
                    self._handle(self._inbox.get_nowait())
                ready = self._next_output()
                if ready is not None:
                    yield ready
                    continue
                if self._ending and not self._utterances:
                    return
                self._handle(await self._inbox.get())
        finally:
            self.close()

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "text":
            u = self._open_utterance()
            if u.first_text_t is None:
                u.first_text_t = item[2]
            u.chunker.feed(item[1])
        elif kind == "flush":
            self._open_utterance().flushed = True
        elif kind == "end":
            if self._utterances and not self._utterances[-1].flushed:
                self._utterances[-1].flushed = True
            self._ending = True
        elif kind == "cancel":
            self._cancel_all()
        elif kind == "stop":
            self.close()
            return
        elif kind == "audio":
            _, u, index, samples = item
            if u.cancel.is_set():
                return
            u.slots[index].pieces.append(samples)
            u.ledger.produced(index, 1000.0 * len(samples) / self._voice.sample_rate_hz)
            u.produced_s += len(samples) / self._voice.sample_rate_hz
            metrics.AUDIO_SECONDS.inc(len(samples) / self._voice.sample_rate_hz)
        elif kind == "job_done":
            _, u, index, compute_s, error = item
            u.compute_s += compute_s
            u.in_flight -= 1
            if u.cancel.is_set():
                return
            slot = u.slots[index]
            slot.finished, slot.error = True, error
        self._submit_ready()

    def _open_utterance(self) -> _Utterance:
        if not self._utterances or self._utterances[-1].flushed:
            self._utterances.append(_Utterance(self._next_id, self._opts, self._voice, self._spec))
            self._next_id += 1
        return self._utterances[-1]

    def _cancel_all(self) -> None:
        if not self._utterances:
            self._open_utterance()  # cancel with nothing in flight still answers with a done
        for u in self._utterances:
            u.cancel.set()
            u.flushed = True
            u.slots.clear()
            metrics.CANCELLATIONS.inc()
        self._cancelled.extend(self._utterances)
        self._utterances.clear()

    def _submit_ready(self) -> None:
        """Give the engine the head utterance's next spans, keeping `lookahead_spans` in flight."""
        if not self._utterances:
            return
        u = self._utterances[0]
        while u.in_flight < self._opts.lookahead_spans:
            span = u.chunker.next_span(final=u.flushed)
            if span is None:
                return
            index = u.ledger.add(span)
            slot = _Slot(index)
            u.slots[index] = slot
            spoken = normalize_for_speech(span.text, self._opts.language)
            if not spoken:
                slot.finished = True  # nothing to say ("**", an emoji): it counts as spoken when reached
                continue
            u.in_flight += 1
            metrics.CHARACTERS.inc(len(span.text))
            now = time.monotonic()
            deadline = now if u.first_audio_t is None else u.first_audio_t + u.produced_s
            self._scheduler.submit(SynthesisJob(
                deadline=deadline, text=spoken, voice=self._voice.name, speed=self._speed, cancelled=u.cancel,
                on_audio=lambda a, u=u, i=index: self._post(("audio", u, i, a)),
                on_done=lambda c, e, u=u, i=index: self._post(("job_done", u, i, c, e)),
            ))

    def _post(self, item: tuple) -> None:
        """From a worker thread: hand a result to the loop (dropped if the loop is gone)."""
        try:
            self._loop.call_soon_threadsafe(self._inbox.put_nowait, item)
        except RuntimeError:
            pass

    # --- cutting audio into chunks ---------------------------------------------------------------------
    def _next_output(self) -> AudioEvent | DoneEvent | None:
        if self._cancelled:
            return self._done(self._cancelled.pop(0), cancelled=True)
        while self._utterances:
            u = self._utterances[0]
            slot = u.slots.get(u.next_emit)
            if slot is None:
                if not u.exhausted:
                    return None
                if not u.tail_sent:  # the resampler's last samples close the utterance's audio
                    u.tail_sent = True
                    tail = u.audio_out.flush()
                    if tail and u.last_mark is not None:
                        offset_ms = round(u.out_samples * 1000 / self._spec.sample_rate_hz)
                        self._count_sent(u, tail)
                        return AudioEvent(u.id, tail, u.last_mark, offset_ms)
                self._utterances.popleft()
                self._submit_ready()
                return self._done(u, cancelled=False)
            if slot.error is not None:
                raise slot.error
            audio = self._take_chunk(slot)
            if audio is None:
                if not slot.finished:
                    return None
                u.ledger.finished(slot.index)
                del u.slots[slot.index]
                u.next_emit += 1
                self._submit_ready()
                continue
            data = u.audio_out.feed(audio)
            source_ms = 1000.0 * len(audio) / self._voice.sample_rate_hz
            if not data:
                u.ledger.sent(slot.index, source_ms, u.out_samples * 1000 / self._spec.sample_rate_hz)
                continue
            offset_ms = round(u.out_samples * 1000 / self._spec.sample_rate_hz)
            mark = u.ledger.sent(slot.index, source_ms, u.out_samples * 1000 / self._spec.sample_rate_hz)
            u.last_mark = mark
            self._count_sent(u, data)
            return AudioEvent(u.id, data, mark, offset_ms)
        return None

    def _take_chunk(self, slot: _Slot) -> np.ndarray | None:
        """Up to one chunk of the slot's audio; a shorter one only when the span is finished."""
        total = sum(len(p) for p in slot.pieces)
        if total == 0 or (total < self._chunk_samples and not slot.finished):
            return None
        need = min(self._chunk_samples, total)
        parts: list[np.ndarray] = []
        while need > 0:
            p = slot.pieces.popleft()
            if len(p) > need:
                slot.pieces.appendleft(p[need:])
                p = p[:need]
            parts.append(p)
            need -= len(p)
        return np.concatenate(parts)

    def _count_sent(self, u: _Utterance, data: bytes) -> None:
        if u.first_audio_t is None:
            u.first_audio_t = time.monotonic()
            if u.first_text_t is not None:
                u.ttfa_s = time.perf_counter() - u.first_text_t
                metrics.TIME_TO_FIRST_AUDIO.observe(u.ttfa_s)
        u.out_samples += len(data) // self._spec.bytes_per_sample

    def _done(self, u: _Utterance, cancelled: bool) -> DoneEvent:
        audio_s = u.out_samples / self._spec.sample_rate_hz
        rtf = u.compute_s / u.produced_s if u.produced_s else 0.0
        if u.produced_s and not cancelled:
            metrics.RTF.observe(rtf)
        return DoneEvent(u.id, cancelled, round(audio_s * 1000), u.ledger.spoken_chars(), 1000.0 * u.ttfa_s, rtf)
