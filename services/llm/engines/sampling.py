"""Next-token choice from logits for the transformers engine: penalty, temperature, top-k, top-p.

A plain function per step (instead of `model.generate`) because the engine interleaves single decode
steps of many requests and must be able to stop any of them between two steps.
"""

from __future__ import annotations

import torch
from voxgrid.services.llm.engines.base import Sampling


def choose_next_token(
    logits: torch.Tensor, params: Sampling, seen_ids: torch.Tensor, generator: torch.Generator | None
) -> int:
    """Pick the next token id from 1-D ``logits`` (vocab) given the ids already in the sequence."""
    scores = logits.float()
    if params.repetition_penalty != 1.0 and seen_ids.numel():
        unique = torch.unique(seen_ids)
        picked = scores[unique]
        scores[unique] = torch.where(
            picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty
        )
    if params.temperature == 0.0:
        return int(torch.argmax(scores))
    scores = scores / params.temperature
    if params.top_k > 0 and params.top_k < scores.numel():
        threshold = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < threshold, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative - torch.softmax(sorted_scores, dim=-1) > params.top_p
        scores = scores.masked_fill(torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
