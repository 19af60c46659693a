"""Per-slot token sampling for a batch of independent conversations.

moshi's `LMGen` samples the whole batch with one temperature and the process-global RNG, so a
session's tokens would depend on who else shares its batch. Here every slot has its own text and
audio temperature and its own seed, and the random numbers come from a counter-based hash of
(seed, draw, codebook, token id): a slot's tokens depend on its own inputs only, whichever slots run
beside it, and everything stays tensor ops on the model's device (no host syncs, CUDA-graph safe).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class SlotSampling:
    """Sampling of one session. Temperature 0 = greedy (argmax)."""

    text_temperature: float
    audio_temperature: float
    seed: int


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 integer hash on int64 tensors holding 32-bit values (products wrap; low bits stay exact)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


class SlotSampler:
    """Holds per-slot sampling state in device tensors, updated in place (CUDA graphs keep pointers)."""

    def __init__(self, batch_size: int, device: torch.device, top_k_text: int, top_k_audio: int) -> None:
        self.batch_size = batch_size
        self.top_k_text = top_k_text
        self.top_k_audio = top_k_audio
        self.text_temp = torch.zeros(batch_size, device=device, dtype=torch.float32)
        self.audio_temp = torch.zeros(batch_size, device=device, dtype=torch.float32)
        self.seed = torch.zeros(batch_size, device=device, dtype=torch.long)
        self.draw = torch.zeros(batch_size, device=device, dtype=torch.long)

    def configure(self, slot: int, sampling: SlotSampling) -> None:
        """Give a slot its session's parameters and restart its random stream (called between steps)."""
        self.text_temp[slot] = max(0.0, sampling.text_temperature)
        self.audio_temp[slot] = max(0.0, sampling.audio_temperature)
        self.seed[slot] = _hash32(torch.tensor(sampling.seed & _MASK32)).item()
        self.draw[slot] = 0

    def advance(self, exec_mask: torch.Tensor) -> None:
        """One model step happened for the slots in `exec_mask`."""
        self.draw.add_(exec_mask.to(self.draw.dtype))

    def sample_text(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, card] -> tokens [B]."""
        return self._sample(logits, self.text_temp, self.top_k_text, stream=0)

    def sample_audio(self, logits: torch.Tensor, codebook: int) -> torch.Tensor:
        """logits [B, card] of one audio codebook -> tokens [B]."""
        return self._sample(logits, self.audio_temp, self.top_k_audio, stream=1 + codebook)

    def _sample(self, logits: torch.Tensor, temp: torch.Tensor, top_k: int, stream: int) -> torch.Tensor:
        logits = logits.float()
        card = logits.shape[-1]
        greedy = temp <= 0
        scaled = logits / torch.where(greedy, torch.ones_like(temp), temp)[:, None]
        if 0 < top_k < card:
            kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        # Gumbel-max: argmax(logits/T + G) is a sample of softmax(logits/T).
        ids = torch.arange(card, device=logits.device, dtype=torch.long)
        key = _hash32(self.seed * 0x9E3779B1 + self.draw * 0x85EBCA77 + stream * 0xC2B2AE3D)
        bits = _hash32(key[:, None] ^ _hash32(ids)[None, :])
        uniform = ((bits >> 8).float() + 0.5) / 16777216.0  # 24 bits: exact in float32, never 0 or 1
        gumbel = -torch.log(-torch.log(uniform))
        noise = torch.where(greedy[:, None], torch.zeros_like(gumbel), gumbel)
        return torch.argmax(scaled + noise, dim=-1)
