"""One decode step for several requests at once: their KV caches joined, left-padded, then split again.

Decoding is memory-bound on CPU: reading the weights once for 4 tokens costs about what it costs for
one, so a batched step multiplies throughput under concurrency. Requests have caches of different
lengths; each is left-padded to the longest, an attention mask hides the padding and explicit position
ids keep every row's rotary positions, so each row computes exactly what it would alone.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def batched_decode_step(model: Any, caches: list[Any], tokens: list[int], new_cache: Any,
                        **extra: Any) -> torch.Tensor:
    """Feed ``tokens[i]`` after ``caches[i]`` for every i in one forward; each cache grows by one position.

    ``new_cache`` is an empty transformers cache to assemble the batch in; ``extra`` goes to the forward.
    Returns logits [batch, vocab].
    """
    lengths = [cache.get_seq_length() for cache in caches]
    longest = max(lengths)
    device = caches[0].layers[0].keys.device
    for layer_index in range(len(caches[0].layers)):
        keys = torch.cat([
            F.pad(cache.layers[layer_index].keys, (0, 0, longest - length, 0))
            for cache, length in zip(caches, lengths, strict=True)
        ])
        values = torch.cat([
            F.pad(cache.layers[layer_index].values, (0, 0, longest - length, 0))
            for cache, length in zip(caches, lengths, strict=True)
        ])
        new_cache.update(keys, values, layer_index)
    mask = torch.ones(len(caches), longest + 1, dtype=torch.long, device=device)
    for row, length in enumerate(lengths):
        mask[row, : longest - length] = 0
    out = model(
        input_ids=torch.tensor(tokens, device=device)[:, None],
        attention_mask=mask,
        position_ids=torch.tensor(lengths, device=device)[:, None],
        cache=new_cache,
        use_cache=True,
        logits_to_keep=1,
        **extra,
    )
    for row, (cache, length) in enumerate(zip(caches, lengths, strict=True)):
        for layer_index, layer in enumerate(cache.layers):
            joined = new_cache.layers[layer_index]
            layer.keys = joined.keys[row : row + 1, :, longest - length :, :]
            layer.values = joined.values[row : row + 1, :, longest - length :, :]
    return out.logits[:, -1]
