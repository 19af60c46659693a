"""Turn detection from VAD probabilities: when speech starts, when silence starts, when the turn ends.

Pure and clock-free: it counts 32 ms VAD windows of the stream, so it behaves the same whether audio
arrives in real time or faster. Hysteresis as in Silero's reference iterator: a window is speech at
`threshold`, silence below `threshold - 0.15`; in between keeps the current state.

Two modes decide when a silence ends the turn:
* fixed-silence: `min_silence_ms` of silence, whatever was said;
* semantic: the session asks a turn model at the SILENCE event and hands its verdict back with
  `set_verdict`; a complete turn ends after `turn_min_wait_ms` of silence, an unfinished one (or one
  whose verdict has not come back yet) only after `turn_max_wait_ms`. Speech resuming voids the verdict.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from voxgrid.services.stt.vad import WINDOW, WINDOW_MS


@dataclass(frozen=True)
class EndpointingOptions:
    min_silence_ms: int = 300
    min_speech_ms: int = 150
    vad_threshold: float = 0.5
    max_utterance_ms: int = 15000
    partial_interval_ms: int = 400
    # Silence after which the final decode starts speculatively (reused if speech does not resume).
    speculative_final_ms: int = 100
    # A cheap preview (greedy, short window) decoded this far into a silence, for an agent to start its
    # answer on before the endpoint; the accurate final still comes from the speculative final decode.
    fast_preview: bool = False
    preview_ms: int = 32
    mode: str = "fixed-silence"  # or "semantic"
    turn_min_wait_ms: int = 200  # semantic: silence that ends a turn the model judges complete
    turn_max_wait_ms: int = 1000  # semantic: silence that ends any turn
    turn_threshold: float = 0.5  # semantic: P(complete) at or above which a turn is complete

    @property
    def semantic(self) -> bool:
        return self.mode == SEMANTIC


FIXED_SILENCE = "fixed-silence"
SEMANTIC = "semantic"
MODES = (FIXED_SILENCE, SEMANTIC)


class EndReason(enum.Enum):
    """Why a turn ended."""

    SILENCE = "silence"  # fixed-silence mode: min_silence_ms
    COMPLETE = "complete"  # semantic: the model said complete, turn_min_wait_ms passed
    MAX_WAIT = "max_wait"  # semantic: unfinished (or no verdict yet), turn_max_wait_ms passed


class Kind(enum.Enum):
    STARTED = "started"  # min_speech_ms of speech seen; `sample` = where the speech began
    SILENCE = "silence"  # speculative_final_ms of silence (semantic: at most turn_min_wait_ms): ask the
    # turn model now; `sample` = end of the last speech window
    PREVIEW = "preview"  # fast_preview: preview_ms of silence; `sample` = end of the last speech window
    RESUMED = "resumed"  # speech came back after SILENCE or PREVIEW, before the turn ended
    ENDED = "ended"  # min_silence_ms of silence; `sample` = end of the last speech window


@dataclass(frozen=True)
class EndpointEvent:
    kind: Kind
    sample: int  # stream position at 16 kHz
    reason: EndReason | None = None  # ENDED only
    probability: float | None = None  # ENDED in semantic mode: the verdict's P(complete), if it came


class Endpointer:
    def __init__(self, options: EndpointingOptions) -> None:
        self.options = options
        self._negative = max(options.vad_threshold - 0.15, 0.01)
        self._window = 0  # index of the next window
        self.in_speech = False  # a started utterance is open
        self._onset: int | None = None  # first speech window of a candidate utterance
        self._speech_windows = 0
        self._last_speech_end = 0  # window index after the last speech window
        self._silence_from: int | None = None
        self._speculated = False
        self._previewed = False
        self._probability: float | None = None  # semantic: the verdict for the current pause
        self.pause = 0  # counts SILENCE events: names the pause a verdict belongs to

    def set_verdict(self, probability: float, pause: int) -> list[EndpointEvent]:
        """The turn model's P(complete) for pause number `pause`; ignored if speech resumed since.

        Returns ENDED at once if the silence already seen is long enough for the verdict.
        """
        if pause != self.pause or self._silence_from is None or not self.in_speech:
            return []
        self._probability = probability
        return self._maybe_end(self._window - self._silence_from)

    def _end_after(self) -> tuple[int, EndReason]:
        """Silence (ms) that ends the turn now, and why."""
        o = self.options
        if not o.semantic:
            return o.min_silence_ms, EndReason.SILENCE
        if self._probability is not None and self._probability >= o.turn_threshold:
            return o.turn_min_wait_ms, EndReason.COMPLETE
        return o.turn_max_wait_ms, EndReason.MAX_WAIT

    def _ms(self, windows: int) -> float:
        return windows * WINDOW_MS

    def push(self, probabilities: list[float] | object) -> list[EndpointEvent]:
        events: list[EndpointEvent] = []
        o = self.options
        for p in probabilities:  # type: ignore[attr-defined]
            w = self._window
            self._window += 1
            if p >= o.vad_threshold:
                if self._onset is None:
                    self._onset = w
                    self._speech_windows = 0
                self._speech_windows += 1
                self._last_speech_end = w + 1
                if self._silence_from is not None and (self._speculated or self._previewed) and self.in_speech:
                    events.append(EndpointEvent(Kind.RESUMED, (w) * WINDOW))
                self._silence_from = None
                self._speculated = False
                self._previewed = False
                self._probability = None
                if not self.in_speech and self._ms(self._speech_windows) >= o.min_speech_ms:
                    self.in_speech = True
                    events.append(EndpointEvent(Kind.STARTED, self._onset * WINDOW))
            elif p < self._negative and self._onset is not None:
                if self._silence_from is None:
                    self._silence_from = w
                silent_ms = self._ms(w + 1 - self._silence_from)
                end = self._last_speech_end * WINDOW
                shortest = o.turn_min_wait_ms if o.semantic else o.min_silence_ms
                if self.in_speech and o.fast_preview and not self._previewed and silent_ms >= o.preview_ms:
                    self._previewed = True
                    events.append(EndpointEvent(Kind.PREVIEW, end))
                if self.in_speech and not self._speculated and silent_ms >= min(o.speculative_final_ms, shortest):
                    self._speculated = True
                    self.pause += 1
                    events.append(EndpointEvent(Kind.SILENCE, end))
                events.extend(self._maybe_end(w + 1 - self._silence_from))
        return events

    def _maybe_end(self, silent_windows: int) -> list[EndpointEvent]:
        o = self.options
        # Before speech started (a candidate onset that died out) the fixed silence applies.
        after, reason = self._end_after() if self.in_speech else (o.min_silence_ms, EndReason.SILENCE)
        if self._ms(silent_windows) < after:
            return []
        out = []
        if self.in_speech:
            out.append(EndpointEvent(Kind.ENDED, self._last_speech_end * WINDOW, reason,
                                     self._probability if o.semantic else None))
        self.reset()
        return out

    def reset(self) -> None:
        """Forget the current utterance (after its end, a flush, a cancel or a cut)."""
        self.in_speech = False
        self._onset = None
        self._speech_windows = 0
        self._silence_from = None
        self._speculated = False
        self._previewed = False
        self._probability = None

    def restart_at(self, sample: int) -> None:
        """Continue an ongoing speech turn as a new utterance starting at `sample` (after a cut)."""
        self.reset()
        self.in_speech = True
        self._onset = sample // WINDOW
        self._speech_windows = 1

    @property
    def position(self) -> int:
        """Stream samples the endpointer has consumed (whole windows)."""
        return self._window * WINDOW
