"""The engine interface the streaming logic and the scheduler program against.

An engine turns batches of audio windows into hypotheses. It knows nothing of streams, VAD or gRPC, so
another model family (e.g. Kyutai STT) plugs in without touching the servicer or the scheduler.
`decode` is synchronous and called only from the scheduler's worker thread.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class DecodeRequest:
    """One audio window to decode.

    `prefix` is text the decoder is forced to start with (the utterance's committed words, so committed
    text can never change); `prompt` conditions the decoder as preceding context.
    """

    audio: np.ndarray  # float32 mono at the engine's sample rate
    prefix: str = ""
    prompt: str = ""
    hotwords: str = ""
    language: str = ""  # ISO 639-1; empty = detect (multilingual models) or English (English-only models)
    final: bool = False  # finals get the final beam size, word timings and confidences
    # A cheap preview of the final (the speculative answer starts from it): greedy, a short window, no word
    # timings. It only has to agree with the accurate final often; a disagreement costs a voided speculation.
    preview: bool = False


@dataclass(frozen=True)
class WordTiming:
    word: str
    start_s: float  # relative to the start of the decoded window
    end_s: float
    probability: float


@dataclass
class Hypothesis:
    text: str
    language: str
    words: list[WordTiming] = field(default_factory=list)
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    decode_s: float = 0.0  # wall time of the batch that produced it
    language_probability: float | None = None  # set when the model detected `language` (the request had none)

    @property
    def confidence(self) -> float:
        if not self.words:
            return 0.0
        return float(np.mean([w.probability for w in self.words]))


@dataclass(frozen=True)
class ModelInfo:
    name: str
    engine: str
    languages: tuple[str, ...]
    multilingual: bool
    properties: dict[str, str] = field(default_factory=dict)


class SttEngine(abc.ABC):
    """A speech recogniser that decodes batches of windows; implementations batch what they can."""

    sample_rate: int = 16000
    max_window_s: float = 30.0

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights (slow; called once from a worker thread before serving)."""

    @abc.abstractmethod
    def decode(self, requests: Sequence[DecodeRequest]) -> list[Hypothesis]:
        """Decode every request; results in the same order. Called only from the scheduler thread."""

    @abc.abstractmethod
    def info(self) -> ModelInfo:
        """What ListModels reports."""
