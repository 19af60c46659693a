"""One recognition stream: VAD → endpointing → decodes through the scheduler → events and transcripts.

Audio (float32, 16 kHz) comes in chunks; results go out through `emit` as `SpeechEventOut` and
`TranscriptOut`. Latency is the point of every choice here:
* speech events leave as soon as the endpointer decides (before any decode);
* while the user speaks, the utterance is re-decoded every `partial_interval_ms` of audio (one partial
  in flight per stream, so a slow machine lowers the partial rate instead of building a queue), and
  `LocalAgreement` commits the words two decodes agree on;
* `speculative_final_ms` into a silence the final decode starts; if speech does not resume it is the
  final, already computed (or nearly) when the endpoint fires `min_silence_ms` in;
* with `fast_preview`, `preview_ms` into a silence a cheap decode (greedy, a window of the utterance plus a
  little, no word timings: ~0.1 s of CPU instead of ~0.6 s for tiny.en on 2 cores) goes out as the
  preview, ahead of the final in the scheduler, so an agent's speculative answer starts before the
  endpoint; the final is still the accurate decode and may differ (the agent compares the two);
* an utterance is cut at `max_utterance_ms` so an hour of speech costs the same per second as a minute;
* semantic end of turn: at the same moment the turn model (`turn_model.py`) is asked whether the
  utterance sounds finished, as it will sound `turn_min_wait_ms` into the silence; its verdict decides
  whether the turn ends then or only at `turn_max_wait_ms`. `settle()` waits for a verdict in flight, so
  the servicer hands the verdict over before the next audio and the outcome does not depend on how fast
  audio arrives.
Memory: the buffer holds the open utterance (≤ max_utterance_ms) plus a short pre-roll, nothing more.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from voxgrid.services.stt.agreement import LocalAgreement
from voxgrid.services.stt.endpointing import Endpointer, EndpointEvent, EndpointingOptions, EndReason, Kind
from voxgrid.services.stt.engines.base import DecodeRequest, Hypothesis, WordTiming
from voxgrid.services.stt.scheduler import DecodeJob, DecodeScheduler
from voxgrid.services.stt.turn_model import TurnDetector
from voxgrid.services.stt.vad import VadStream

log = logging.getLogger(__name__)

RATE = 16000
PREROLL = int(0.2 * RATE)  # audio kept before the VAD onset: the onset lags the first phoneme
NO_SPEECH_PROB = 0.6  # whisper's own "this was not speech" rule, with avg_logprob < -1
NO_SPEECH_LOGPROB = -1.0


@dataclass(frozen=True)
class SpeechEventOut:
    started: bool
    offset_ms: int
    utterance_id: int
    at: float = field(default_factory=time.perf_counter)
    resumed: bool = False  # speech came back after a speculative preview was sent
    turn: TurnDecision | None = None  # speech_ended: how the end of turn was decided


@dataclass(frozen=True)
class TurnDecision:
    mode: str  # "fixed-silence" or "semantic"
    reason: EndReason | None  # None: ended by flush/end/cut, not by a silence
    probability: float | None = None  # semantic: the turn model's P(complete), if it came back in time


@dataclass(frozen=True)
class TranscriptOut:
    utterance_id: int
    text: str
    is_final: bool
    committed_text: str
    stability: float
    start_ms: int
    end_ms: int
    language: str
    words: tuple[WordTiming, ...] = ()  # offsets already relative to the stream start, in seconds
    confidence: float = 0.0
    decode_ms: float = 0.0  # partials: what the decode took
    final_anchor: float | None = None  # finals: perf_counter of the speech_ended (or cut/flush) moment
    speculative: bool = False  # a preview of the final, sent when silence began
    turn: TurnDecision | None = None  # finals: how the end of turn was decided
    language_probability: float | None = None  # set when the model detected `language`


@dataclass(frozen=True)
class RecognitionOptions:
    endpointing: EndpointingOptions = field(default_factory=EndpointingOptions)
    interim_results: bool = False
    language: str = ""
    initial_prompt: str = ""
    hotwords: tuple[str, ...] = ()
    final_keeps_commit: bool = False  # finals forced to start with the committed words


@dataclass
class _Utterance:
    uid: int
    start: int  # stream sample where its audio starts (speech onset)
    agreement: LocalAgreement = field(default_factory=LocalAgreement)
    last_partial_at: int = 0  # stream sample of the last partial's audio end
    partial: asyncio.Task[None] | None = None
    speculative: DecodeJob | None = None
    speculative_end: int = 0
    preview_job: DecodeJob | None = None  # fast_preview: the cheap decode of this pause
    preview_end: int = 0
    final_sent: bool = False
    previewed: bool = False  # the speculative decode's text went out as a preview
    prompt: str = ""
    audio_start: int = -1  # where its decode window starts; -1 = `start` minus the pre-roll

    def __post_init__(self) -> None:
        if self.audio_start < 0:
            self.audio_start = max(self.start - PREROLL, 0)


class RecognitionSession:
    def __init__(
        self,
        session_id: str,
        options: RecognitionOptions,
        vad: VadStream,
        scheduler: DecodeScheduler,
        emit: Callable[[SpeechEventOut | TranscriptOut], None],
        *,
        on_partial_latency: Callable[[float], None] | None = None,
        turn_detector: TurnDetector | None = None,
    ) -> None:
        self.session_id = session_id
        self.options = options
        self._vad = vad
        self._scheduler = scheduler
        self._emit = emit
        self._on_partial_latency = on_partial_latency
        self._endpointer = Endpointer(options.endpointing)
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0  # stream sample of _buffer[0]
        self.received = 0  # stream samples received
        self._utt: _Utterance | None = None
        self._next_uid = 1
        self._finals: set[asyncio.Task[None]] = set()
        self._jobs: set[DecodeJob] = set()
        self._carry_prompt = ""  # committed text of an utterance cut at max_utterance_ms
        self._turn_detector = turn_detector if options.endpointing.semantic else None
        self._turn_check: tuple[concurrent.futures.Future[float], int] | None = None  # (verdict, pause)

    # --- public -------------------------------------------------------------------------------------
    def vad(self, samples: np.ndarray) -> np.ndarray:
        """Speech probabilities for a chunk; blocking model work, run it off the event loop."""
        return self._vad.process(samples)

    def feed(self, samples: np.ndarray, probabilities: np.ndarray) -> None:
        """Take a chunk and its VAD probabilities (from `vad`); emits events, submits decodes."""
        self._buffer = np.concatenate([self._buffer, samples])
        self.received += len(samples)
        self._handle(self._endpointer.push(probabilities))
        utt = self._utt
        if utt is not None:
            o = self.options.endpointing
            if self.received - utt.start >= o.max_utterance_ms * RATE // 1000:
                self._cut()
            elif (self.options.interim_results and utt.speculative is None and utt.preview_job is None
                  and (utt.partial is None or utt.partial.done())
                  and self.received - utt.last_partial_at >= o.partial_interval_ms * RATE // 1000):
                utt.last_partial_at = self.received
                utt.partial = asyncio.get_running_loop().create_task(self._partial(utt, self.received))
        self._trim()

    async def settle(self) -> None:
        """Wait for a turn verdict in flight and apply it (it may end the turn at once)."""
        check = self._turn_check
        if check is None:
            return
        future, pause = check
        try:
            probability = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if future.cancelled():  # the utterance ended or was dropped meanwhile: no verdict needed
                return
            future.cancel()
            raise
        except Exception:  # a failed inference must not end the stream: the turn waits for max wait
            log.exception("turn model inference failed")
            return
        finally:
            if self._turn_check is check:
                self._turn_check = None
        self._handle(self._endpointer.set_verdict(probability, pause))

    def _handle(self, events: list[EndpointEvent]) -> None:
        for event in events:
            if event.kind is Kind.STARTED:
                self._open(event.sample)
            elif event.kind is Kind.PREVIEW and self._utt is not None:
                self._fast_preview(self._utt, self._endpointer.position)
            elif event.kind is Kind.SILENCE and self._utt is not None:
                self._speculate(self._utt, self._endpointer.position)
                self._ask_turn_model(self._utt, event.sample)
            elif event.kind is Kind.RESUMED and self._utt is not None:
                self._drop_speculation(self._utt)
                if self._utt.previewed:
                    self._utt.previewed = False
                    self._emit(SpeechEventOut(False, _ms(event.sample), self._utt.uid, resumed=True))
            elif event.kind is Kind.ENDED and self._utt is not None:
                turn = TurnDecision(self.options.endpointing.mode, event.reason, event.probability)
                self._end(event.sample, emit_event=True, turn=turn)

    def _ask_turn_model(self, utt: _Utterance, speech_end: int) -> None:
        """Submit the utterance as it will sound `turn_min_wait_ms` into this silence."""
        if self._turn_detector is None:
            return
        wait = self.options.endpointing.turn_min_wait_ms * RATE // 1000
        heard = self._audio(utt.audio_start, min(self.received, speech_end + wait))
        audio = np.concatenate([heard, np.zeros(max(speech_end + wait - utt.audio_start - len(heard), 0),
                                                np.float32)])
        if self._turn_check is not None:
            self._turn_check[0].cancel()
        self._turn_check = (self._turn_detector.submit(audio), self._endpointer.pause)

    def flush(self) -> None:
        """Finalise the open utterance now (as if the silence had been seen)."""
        if self._utt is not None:
            self._end(min(self.received, self._endpointer.position), emit_event=True)
        self._endpointer.reset()

    def cancel_utterance(self) -> None:
        """Drop the open utterance without a final (e.g. it was the agent's own echo)."""
        utt = self._utt
        if utt is not None:
            self._drop_speculation(utt)
            if utt.partial is not None:
                utt.partial.cancel()
            self._utt = None
        if self._turn_check is not None:
            self._turn_check[0].cancel()
            self._turn_check = None
        self._endpointer.reset()

    async def finish(self) -> None:
        """Finalise what is open and wait until every final has been emitted."""
        self.flush()
        while self._finals:
            await asyncio.gather(*self._finals, return_exceptions=True)

    def close(self) -> None:
        """Free everything now (client gone): queued decodes leave the scheduler, tasks are cancelled."""
        self._scheduler.drop_session(self.session_id)
        for job in list(self._jobs):
            job.future.cancel()
        self._jobs.clear()
        if self._utt is not None and self._utt.partial is not None:
            self._utt.partial.cancel()
        for task in list(self._finals):
            task.cancel()
        if self._turn_check is not None:
            self._turn_check[0].cancel()
            self._turn_check = None
        self._utt = None
        self._buffer = np.zeros(0, dtype=np.float32)

    @property
    def buffered_samples(self) -> int:
        return len(self._buffer)

    # --- utterance lifecycle ------------------------------------------------------------------------
    def _open(self, start: int, audio_start: int = -1) -> None:
        uid = self._next_uid
        self._next_uid += 1
        self._utt = _Utterance(uid, start, last_partial_at=start, prompt=self._carry_prompt,
                               audio_start=audio_start)
        self._carry_prompt = ""
        self._emit(SpeechEventOut(True, _ms(start), uid))

    def _end(self, end_sample: int, *, emit_event: bool, turn: TurnDecision | None = None) -> None:
        utt = self._utt
        assert utt is not None
        self._utt = None
        if self._turn_check is not None:
            self._turn_check[0].cancel()
            self._turn_check = None
        turn = turn or TurnDecision(self.options.endpointing.mode, None)
        anchor = time.perf_counter()
        if emit_event:
            self._emit(SpeechEventOut(False, _ms(end_sample), utt.uid, at=anchor, turn=turn))
        if utt.partial is not None:
            utt.partial.cancel()
        job = utt.speculative
        if job is None:
            job = self._submit(utt, self._audio(utt.audio_start, self.received), final=True)
        task = asyncio.get_running_loop().create_task(self._final(utt, job, end_sample, anchor, turn))
        self._finals.add(task)
        task.add_done_callback(self._finals.discard)

    def _cut(self) -> None:
        """Long speech: finalise what we have and go on with a new utterance from here."""
        utt = self._utt
        assert utt is not None
        self._drop_speculation(utt)
        self._carry_prompt = utt.agreement.committed_text[-200:]
        cut_at = self.received
        self._end(cut_at, emit_event=False)
        self._endpointer.restart_at(cut_at)
        self._open(cut_at, audio_start=cut_at)

    def _speculate(self, utt: _Utterance, end: int) -> None:
        if utt.speculative is not None:
            self._cancel_job(utt.speculative)
            utt.speculative = None
        if utt.partial is not None:
            utt.partial.cancel()
        job = utt.speculative = self._submit(utt, self._audio(utt.audio_start, end), final=True)
        utt.speculative_end = end
        loop = asyncio.get_running_loop()
        job.future.add_done_callback(lambda _f: loop.call_soon_threadsafe(self._preview, utt, job))

    def _fast_preview(self, utt: _Utterance, end: int) -> None:
        """Silence began: decode the utterance cheaply now (ahead of partials and finals) for the preview."""
        if utt.preview_job is not None:
            self._cancel_job(utt.preview_job)
        if utt.partial is not None:
            utt.partial.cancel()  # a queued partial would only delay the preview; its result would be stale
        job = utt.preview_job = self._submit(utt, self._audio(utt.audio_start, end), final=False, preview=True)
        utt.preview_end = end
        loop = asyncio.get_running_loop()
        job.future.add_done_callback(lambda _f: loop.call_soon_threadsafe(self._preview, utt, job))

    def _preview(self, utt: _Utterance, job: DecodeJob) -> None:
        """A decode of this pause is ready while the caller is still silent: send the first as the preview
        (the fast one, or the speculative final when there is no fast preview or it heard nothing). A fast
        preview still goes out after the endpoint while the final is being decoded: speech can no longer
        resume, and an answer started on it gains the rest of the final's decode."""
        open_ = self._utt is utt or (job is utt.preview_job and not utt.final_sent)
        if (not open_ or utt.previewed or job not in (utt.speculative, utt.preview_job)
                or job.future.cancelled() or job.future.exception()):
            return
        hyp = job.future.result()
        text = self._final_text(utt, hyp)
        if not text:
            return
        utt.previewed = True
        end = utt.speculative_end if job is utt.speculative else utt.preview_end
        self._emit(TranscriptOut(utt.uid, text, False, text, 1.0, _ms(utt.start), _ms(end),
                                 hyp.language, decode_ms=hyp.decode_s * 1000, speculative=True,
                                 language_probability=hyp.language_probability))

    def _final_text(self, utt: _Utterance, hyp: Hypothesis) -> str:
        if _is_silence(hyp):
            return ""
        return utt.agreement.final_text(hyp.text) if self.options.final_keeps_commit else hyp.text.strip()

    def _drop_speculation(self, utt: _Utterance) -> None:
        for job in (utt.speculative, utt.preview_job):
            if job is not None:
                self._cancel_job(job)
        utt.speculative = utt.preview_job = None

    def _cancel_job(self, job: DecodeJob) -> None:
        self._scheduler.cancel(job)
        self._jobs.discard(job)

    # --- decodes --------------------------------------------------------------------------------------
    def _submit(self, utt: _Utterance, audio: np.ndarray, *, final: bool, preview: bool = False) -> DecodeJob:
        o = self.options
        keep = (not final and not preview) or o.final_keeps_commit  # a preview is decoded as the final is
        request = DecodeRequest(
            audio=audio, prefix=utt.agreement.committed_text if keep else "",
            prompt=" ".join(p for p in (o.initial_prompt, utt.prompt) if p),
            hotwords=", ".join(o.hotwords), language=o.language, final=final, preview=preview,
        )
        job = self._scheduler.submit(self.session_id, request)
        self._jobs.add(job)
        job.future.add_done_callback(lambda _f: self._jobs.discard(job))
        return job

    async def _partial(self, utt: _Utterance, end: int) -> None:
        job = self._submit(utt, self._audio(utt.audio_start, end), final=False)
        try:
            hyp = await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            self._scheduler.cancel(job)
            raise
        if self._utt is not utt or utt.speculative is not None or utt.preview_job is not None or _is_silence(hyp):
            return  # the utterance moved on (ended, cut, cancelled): this partial is stale
        if self._on_partial_latency is not None:
            self._on_partial_latency(hyp.decode_s)
        part = utt.agreement.update(hyp.text)
        if not part.text:
            return
        self._emit(TranscriptOut(
            utt.uid, part.text, False, part.committed_text, part.stability, _ms(utt.start), _ms(end),
            hyp.language, decode_ms=hyp.decode_s * 1000, language_probability=hyp.language_probability,
        ))

    async def _final(
        self, utt: _Utterance, job: DecodeJob, end_sample: int, anchor: float, turn: TurnDecision
    ) -> None:
        try:
            hyp = await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            self._scheduler.cancel(job)
            raise
        utt.final_sent = True
        silent = _is_silence(hyp)
        text = self._final_text(utt, hyp)
        base = utt.audio_start / RATE
        words = () if silent else tuple(
            WordTiming(w.word, base + w.start_s, base + w.end_s, w.probability) for w in hyp.words
        )
        self._emit(TranscriptOut(
            utt.uid, text, True, text, 1.0, _ms(utt.start), _ms(end_sample), hyp.language, words=words,
            confidence=0.0 if silent else hyp.confidence, decode_ms=hyp.decode_s * 1000, final_anchor=anchor,
            turn=turn, language_probability=hyp.language_probability,
        ))

    # --- audio buffer -------------------------------------------------------------------------------
    def _audio(self, start: int, end: int) -> np.ndarray:
        a = max(start, self._buffer_start) - self._buffer_start
        return self._buffer[a : max(end - self._buffer_start, a)].copy()

    def _trim(self) -> None:
        """Keep the open utterance (with pre-roll) or, between utterances, just the pre-roll."""
        keep_from = self.received - PREROLL - RATE  # a speech onset is confirmed up to ~1 s after it
        if self._utt is not None:
            keep_from = min(keep_from, self._utt.audio_start)
        drop = keep_from - self._buffer_start
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._buffer_start += drop


def _ms(sample: int) -> int:
    return round(sample * 1000 / RATE)


def _is_silence(hyp: Hypothesis) -> bool:
    return not hyp.text.strip() or (hyp.no_speech_prob > NO_SPEECH_PROB and hyp.avg_logprob < NO_SPEECH_LOGPROB)


async def cancel_quietly(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
