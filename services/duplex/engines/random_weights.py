"""Random-weight Moshi models that still react to their input, for tests and capacity benchmarks.

A Mimi built without a checkpoint has all-zero codebooks, so every input encodes to code 0 and every
session would produce the same tokens: tests could then not tell sessions apart. Real codebooks are
initialised from data (k-means on encoder outputs); here each codebook level is seeded, in order, with
jittered encoder outputs of a short synthetic calibration signal, so different audio gives different
codes. The weights stay random: the output is noise, not speech.
"""

from __future__ import annotations

from typing import Any

import torch


def calibration_audio(sample_rate: int, seconds: float = 2.0, seed: int = 0) -> torch.Tensor:
    """[4, 1, T] of noise bursts, chirps and tones at several levels: varied encoder outputs."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(sample_rate * seconds)) / sample_rate
    envelope = 0.5 + 0.5 * torch.sin(2 * torch.pi * 1.5 * t)
    signals = [
        0.3 * torch.randn(t.shape, generator=gen) * envelope,
        0.5 * torch.sin(2 * torch.pi * (100 + 1500 * t) * t),
        0.2 * torch.sin(2 * torch.pi * 220 * t) + 0.05 * torch.randn(t.shape, generator=gen),
        0.8 * torch.randn(t.shape, generator=gen) * (t % 0.5 < 0.25),
    ]
    return torch.stack(signals)[:, None, :].float()


@torch.no_grad()
def seed_mimi_codebooks(mimi: Any, seed: int = 0, jitter: float = 0.3) -> int:
    """Fill every uninitialised codebook from its own inputs; returns how many were seeded."""
    from moshi.quantization.core_vq import EuclideanCodebook

    gen = torch.Generator().manual_seed(seed)
    codebooks = [m for m in mimi.modules() if isinstance(m, EuclideanCodebook) and not m.initialized]

    def seeding_encode(book: Any) -> Any:
        original = book.encode

        def encode(x: torch.Tensor) -> torch.Tensor:
            if not book.initialized:
                flat = x.reshape(-1, x.shape[-1]).float().cpu()
                picks = flat[torch.randint(len(flat), (book.codebook_size,), generator=gen)]
                noise = torch.randn(picks.shape, generator=gen) * flat.std(dim=0, keepdim=True) * jitter
                book.embedding_sum.copy_((picks + noise).to(book.embedding_sum))
                book.cluster_usage.fill_(1.0)
                book._initialized.fill_(1.0)
                book._cached_initialized = False
                book._embedding = None
            return original(x)

        return encode

    for book in codebooks:
        book.encode = seeding_encode(book)
    try:
        device = next(mimi.parameters()).device
        mimi.encode(calibration_audio(int(mimi.sample_rate), seed=seed).to(device))
    finally:
        for book in codebooks:
            del book.encode
    return len(codebooks)
