"""Every knob of the duplex service: env VOXGRID_DUPLEX_<FIELD>, flag --field-name, Helm value."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from voxgrid.config import ServerSettings


class DuplexSettings(ServerSettings):
    model_config = ServerSettings.model_config | SettingsConfigDict(env_prefix="VOXGRID_DUPLEX_")

    engine: Literal["moshi"] = Field("moshi", description="Duplex engine: moshi (Kyutai Moshi + Mimi).")
    model: str = Field(
        "random-small",
        description="Moshi weights: a hub id (e.g. kyutai/moshiko-pytorch-bf16, from the HF cache), a local "
        "directory with the checkpoint files, `random-small` (tiny random LM for CPU tests: NOT speech) or "
        "`random-7b` (the 7B architecture with random weights, for GPU capacity benchmarks).",
    )
    slots: int = Field(
        4, ge=1, le=256,
        description="Conversations stepped together in one batch (the replica's session limit follows it).",
    )
    device: str = Field("auto", description="torch device: auto (cuda if present, else cpu), cuda, cuda:1, cpu.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="LM weights dtype; auto = bfloat16 on CUDA, float32 on CPU."
    )
    text_temperature: float | None = Field(
        None, ge=0, le=2, description="Default text sampling temperature (0 = greedy); unset = checkpoint default."
    )
    audio_temperature: float | None = Field(
        None, ge=0, le=2, description="Default audio sampling temperature (0 = greedy); unset = checkpoint default."
    )
    top_k_text: int = Field(25, ge=0, description="Text tokens considered when sampling (0 = all).")
    top_k_audio: int = Field(250, ge=0, description="Audio tokens considered when sampling (0 = all).")
    stall_timeout_s: float = Field(
        10.0, gt=0, description="A session missing this much audio in a row (in model frames fed silence) "
        "is ended and its slot freed; the same wait applies to a session that never sends audio.",
    )
    max_buffered_s: float = Field(
        30.0, gt=0, description="Audio a client may send ahead of the model before it is told to slow down."
    )
    weights_seed: int = Field(0, description="Seed of the random-weight models (random-small, random-7b).")

    @model_validator(mode="after")
    def _sessions_follow_slots(self) -> DuplexSettings:
        """A replica never admits more streams than it has slots (the chassis gate answers the rest)."""
        if "max_sessions" in self.model_fields_set:
            self.max_sessions = min(self.max_sessions, self.slots)
        else:
            self.max_sessions = self.slots
        return self
