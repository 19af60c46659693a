"""Next-token choice: greedy, top-k, top-p, seeds, repetition penalty."""

from __future__ import annotations

import torch
from voxgrid.services.llm.engines.base import Sampling
from voxgrid.services.llm.engines.sampling import choose_next_token

LOGITS = torch.tensor([0.0, 3.0, 2.9, -1.0, 1.0])
NONE = torch.tensor([], dtype=torch.long)


def test_temperature_zero_is_argmax() -> None:
    assert choose_next_token(LOGITS.clone(), Sampling(temperature=0), NONE, None) == 1


def test_top_k_one_and_tiny_top_p_leave_only_the_best_token() -> None:
    for params in (Sampling(temperature=1.5, top_k=1), Sampling(temperature=1.5, top_p=1e-6)):
        picks = {choose_next_token(LOGITS.clone(), params, NONE, None) for _ in range(30)}
        assert picks == {1}


def test_top_k_two_never_picks_outside_the_two_best() -> None:
    picks = {choose_next_token(LOGITS.clone(), Sampling(temperature=2.0, top_k=2), NONE, None) for _ in range(200)}
    assert picks <= {1, 2} and len(picks) == 2


def test_same_seed_same_tokens() -> None:
    def draw(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return [choose_next_token(LOGITS.clone(), Sampling(temperature=2.0), NONE, gen) for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_repetition_penalty_moves_greedy_away_from_a_seen_token() -> None:
    seen = torch.tensor([1])
    assert choose_next_token(LOGITS.clone(), Sampling(temperature=0, repetition_penalty=1.5), seen, None) == 2
