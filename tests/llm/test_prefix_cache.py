"""Per-session KV prefix cache: reuse must be exact, memory must be bounded."""

from __future__ import annotations

import torch
from voxgrid.services.llm.engines.prefix_cache import SessionPrefixCache, common_prefix_len


def test_prefix_cache_continuation_matches_a_full_forward(tiny_model_path: str) -> None:
    from transformers import AutoModelForCausalLM, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    ids = torch.arange(100, 140)
    store = SessionPrefixCache(max_sessions=2, entries_per_session=2)
    with torch.inference_mode():
        past = DynamicCache(config=model.config)
        model(input_ids=ids[None, :30], cache=past)
        store.store("s", ids[:30], past)
        matched, reused = store.take("s", torch.cat([ids[:25], torch.tensor([7, 8, 9])]))
        assert matched == 25 and reused.get_seq_length() == 25
        tail = torch.tensor([7, 8, 9])
        cached_logits = model(input_ids=tail[None], cache=reused).logits[0, -1]
        full_logits = model(input_ids=torch.cat([ids[:25], tail])[None]).logits[0, -1]
    assert torch.allclose(cached_logits, full_logits, atol=1e-4)
    assert store.take("s", ids[:30])[0] == 29  # the last prompt token is always computed


def test_prefix_cache_is_bounded() -> None:
    store = SessionPrefixCache(max_sessions=2, entries_per_session=2)
    for session in ("a", "b", "c"):
        for n in (3, 4, 5):
            store.store(session, torch.tensor([n] * n), object())
    assert len(store) == 4  # 2 sessions x 2 entries; "a" evicted
    assert store.take("a", torch.tensor([3, 3, 3, 3]))[1] is None
    assert common_prefix_len(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4])) == 2
