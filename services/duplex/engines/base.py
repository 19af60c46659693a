"""What the slot scheduler needs from a full-duplex speech model: a fixed batch of slots stepped together.

A model holds `batch_size` independent conversations. Each `step` consumes exactly one frame of
caller audio per slot and returns one frame of the model's speech and one text token per slot. Only
the scheduler's worker thread ever calls `load`, `warmup`, `configure_slot` and `step`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np
from voxgrid.services.duplex.engines.slot_sampling import SlotSampling


@dataclass
class BatchStepOutput:
    """One batched step. Rows of slots that were not active are meaningless."""

    pcm: np.ndarray  # [batch, frame_size] float32 at `sample_rate`
    text_tokens: np.ndarray  # [batch] int64
    has_output: np.ndarray  # [batch] bool: False while a slot's output is still in the model's delay


class BatchedDuplexModel(abc.ABC):
    """A speech-to-speech model with per-slot streaming state (reset per slot, masked when idle)."""

    engine_name: str
    model_name: str
    sample_rate: int
    frame_size: int
    batch_size: int

    @property
    def frame_ms(self) -> float:
        return 1000.0 * self.frame_size / self.sample_rate

    @abc.abstractmethod
    def load(self) -> None:
        """Build or load weights and enter streaming mode for `batch_size` slots (slow)."""

    @abc.abstractmethod
    def warmup(self) -> None:
        """Run a few steps so the first real frame does not pay for lazy initialisation."""

    @abc.abstractmethod
    def default_sampling(self) -> SlotSampling:
        """Temperatures used when a session does not set them (its seed is then random)."""

    @abc.abstractmethod
    def configure_slot(self, slot: int, sampling: SlotSampling) -> None:
        """A new session takes `slot`: its state is reset on the next step, other slots keep theirs."""

    @abc.abstractmethod
    def step(self, pcm: np.ndarray, active: np.ndarray) -> BatchStepOutput:
        """pcm [batch, frame_size] float32; active [batch] bool (inactive slots keep their state)."""

    @abc.abstractmethod
    def text_piece(self, token: int) -> str:
        """The text a token stands for ("" for padding)."""

    @abc.abstractmethod
    def info(self) -> dict[str, str]:
        """Facts for ListModels (device, dtype, batch size, ...)."""
