"""The engine interface: text in, audio pieces out, called only from the synthesis worker threads.

An engine owns a model and its voices. `synthesize` is blocking and may run for a while, so the
scheduler calls it on a worker thread and checks for cancellation between the pieces it yields: an
engine that can stream (a GPU streaming vocoder) yields small pieces and is cancelled quickly; one
that cannot (Piper, Kokoro: one piece per sentence) yields whole sentences.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np


class UnknownVoiceError(ValueError):
    """The requested voice is not served here; the message lists those that are."""


@dataclass(frozen=True)
class Voice:
    """A voice as ListVoices describes it."""

    name: str
    engine: str
    sample_rate_hz: int
    languages: tuple[str, ...] = ()
    properties: dict[str, str] = field(default_factory=dict)


class TtsEngine(abc.ABC):
    """A text-to-speech model with one or more voices."""

    name: ClassVar[str]

    @abc.abstractmethod
    def load(self) -> None:
        """Load weights (blocking, seconds); called once, off the event loop, before any synthesis."""

    @abc.abstractmethod
    def voices(self) -> list[Voice]:
        """Voices this engine serves; the first is the default."""

    @abc.abstractmethod
    def synthesize(self, text: str, voice: str, speed: float) -> Iterator[np.ndarray]:
        """Speak already-normalised text: float32 mono pieces in [-1, 1] at the voice's rate, in order.

        `speed` is a rate multiplier in [0.5, 2.0]. Runs on a worker thread only.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model."""

    def voice(self, name: str) -> Voice:
        """The named voice, or the default for ''; UnknownVoiceError names the available ones."""
        voices = self.voices()
        if not name:
            return voices[0]
        for v in voices:
            if v.name == name:
                return v
        raise UnknownVoiceError(
            f"unknown voice {name!r}: this replica serves {', '.join(v.name for v in voices)} "
            "(ListVoices lists them; leave voice empty for the default)"
        )


def onnx_providers(device: str) -> list[str]:
    """onnxruntime providers for `device` ('cpu', 'cuda' or 'auto': CUDA when the runtime has it)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise RuntimeError(
            "device=cuda but this onnxruntime has no CUDAExecutionProvider: install onnxruntime-gpu "
            f"(available: {', '.join(available)}) or use device=cpu"
        )
    return ["CPUExecutionProvider"]


def onnx_session_options(threads: int):  # -> onnxruntime.SessionOptions
    """Session options with `threads` intra-op threads (0 = onnxruntime's default, all cores)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts
