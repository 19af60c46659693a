"""Per-slot sampling: greedy is argmax, seeded draws repeat, slots never influence each other."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from voxgrid.services.duplex.engines.slot_sampling import SlotSampler, SlotSampling  # noqa: E402
from voxgrid.services.duplex.settings import DuplexSettings  # noqa: E402


def sampler(*configs: SlotSampling, top_k: int = 0) -> SlotSampler:
    s = SlotSampler(len(configs), torch.device("cpu"), top_k_text=top_k, top_k_audio=top_k)
    for slot, c in enumerate(configs):
        s.configure(slot, c)
    return s


def test_greedy_slots_take_the_argmax() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    s = sampler(*[SlotSampling(0.0, 0.0, seed) for seed in range(3)])
    assert torch.equal(s.sample_text(logits), logits.argmax(-1))
    assert torch.equal(s.sample_audio(logits, 2), logits.argmax(-1))


def test_a_slot_draws_the_same_tokens_whatever_its_neighbours_do() -> None:
    gen = torch.Generator().manual_seed(1)
    mine = torch.randn(20, 100, generator=gen)
    a = sampler(SlotSampling(1.0, 1.0, 42))
    b = sampler(SlotSampling(0.0, 0.0, 7), SlotSampling(1.0, 1.0, 42), SlotSampling(1.5, 1.5, 9))
    alone, beside = [], []
    for step in range(20):
        alone.append(int(a.sample_text(mine[step : step + 1])[0]))
        batch = torch.stack([torch.randn(100, generator=gen), mine[step], torch.randn(100, generator=gen)])
        beside.append(int(b.sample_text(batch)[1]))
        a.advance(torch.ones(1, dtype=torch.bool))
        b.advance(torch.tensor([True, True, False]))
    assert alone == beside
    assert len(set(alone)) > 5  # it really samples


def test_seed_restarts_the_stream_and_different_seeds_differ() -> None:
    logits = torch.zeros(1, 1000)  # uniform: only the noise decides
    s = sampler(SlotSampling(1.0, 1.0, 5))
    first = [int(s.sample_audio(logits, cb)[0]) for cb in range(8)]
    s.configure(0, SlotSampling(1.0, 1.0, 5))
    assert [int(s.sample_audio(logits, cb)[0]) for cb in range(8)] == first
    s.configure(0, SlotSampling(1.0, 1.0, 6))
    assert [int(s.sample_audio(logits, cb)[0]) for cb in range(8)] != first


def test_samples_follow_the_softmax_and_respect_top_k() -> None:
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1, 1e-9]]))
    s = sampler(SlotSampling(1.0, 1.0, 3))
    counts = torch.zeros(4)
    for _ in range(3000):
        counts[s.sample_text(logits)[0]] += 1
        s.advance(torch.ones(1, dtype=torch.bool))
    assert torch.allclose(counts / counts.sum(), torch.tensor([0.6, 0.3, 0.1, 0.0]), atol=0.04)
    top2 = sampler(SlotSampling(1.0, 1.0, 3), top_k=2)
    drawn = set()
    for _ in range(300):
        drawn.add(int(top2.sample_text(logits)[0]))
        top2.advance(torch.ones(1, dtype=torch.bool))
    assert drawn == {0, 1}


def test_replica_session_limit_follows_the_slots() -> None:
    assert DuplexSettings(slots=6).max_sessions == 6
    assert DuplexSettings(slots=6, max_sessions=2).max_sessions == 2
    assert DuplexSettings(slots=2, max_sessions=64).max_sessions == 2
