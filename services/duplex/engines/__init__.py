"""Duplex engines: batched speech-to-speech models behind `BatchedDuplexModel`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from voxgrid.services.duplex.engines.base import BatchedDuplexModel

if TYPE_CHECKING:
    from voxgrid.services.duplex.settings import DuplexSettings


def create_model(settings: DuplexSettings) -> BatchedDuplexModel:
    """The engine the settings name (not loaded yet: the scheduler loads it in its thread)."""
    if settings.engine == "moshi":
        from voxgrid.services.duplex.engines.moshi_engine import MoshiBatchModel

        return MoshiBatchModel(
            model=settings.model, batch_size=settings.slots, device=settings.device, dtype=settings.dtype,
            text_temperature=settings.text_temperature, audio_temperature=settings.audio_temperature,
            top_k_text=settings.top_k_text, top_k_audio=settings.top_k_audio, weights_seed=settings.weights_seed,
        )
    raise ValueError(f"unknown duplex engine {settings.engine!r}: use moshi")
