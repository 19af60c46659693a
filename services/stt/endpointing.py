"""Turn detection from VAD probabilities: when speech starts, when silence starts, when the turn ends.

Pure and clock-free: it counts 32 ms VAD windows of the stream, so it behaves the same whether audio
arrives in real time or faster. Hysteresis as in Silero's reference iterator: a window is speech at
`threshold`, silence below `threshold - 0.15`; in between keeps the current state.
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


class Kind(enum.Enum):
    STARTED = "started"  # min_speech_ms of speech seen; `sample` = where the speech began
    SILENCE = "silence"  # speculative_final_ms of silence; `sample` = end of the last speech window
    RESUMED = "resumed"  # speech came back after SILENCE, before the turn ended
    ENDED = "ended"  # min_silence_ms of silence; `sample` = end of the last speech window


@dataclass(frozen=True)
class EndpointEvent:
    kind: Kind
    sample: int  # stream position at 16 kHz


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
                if self._silence_from is not None and self._speculated and self.in_speech:
                    events.append(EndpointEvent(Kind.RESUMED, (w) * WINDOW))
                self._silence_from = None
                self._speculated = False
                if not self.in_speech and self._ms(self._speech_windows) >= o.min_speech_ms:
                    self.in_speech = True
                    events.append(EndpointEvent(Kind.STARTED, self._onset * WINDOW))
            elif p < self._negative and self._onset is not None:
                if self._silence_from is None:
                    self._silence_from = w
                silent_ms = self._ms(w + 1 - self._silence_from)
                end = self._last_speech_end * WINDOW
                if self.in_speech and not self._speculated and silent_ms >= min(
                    o.speculative_final_ms, o.min_silence_ms
                ):
                    self._speculated = True
                    events.append(EndpointEvent(Kind.SILENCE, end))
                if silent_ms >= o.min_silence_ms:
                    if self.in_speech:
                        events.append(EndpointEvent(Kind.ENDED, end))
                    self.reset()
        return events

    def reset(self) -> None:
        """Forget the current utterance (after its end, a flush, a cancel or a cut)."""
        self.in_speech = False
        self._onset = None
        self._speech_windows = 0
        self._silence_from = None
        self._speculated = False

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
