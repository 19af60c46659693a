"""LoRA adapters made on the spot with peft, for the vLLM engine's LoRA tests (CPU and GPU)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def make_adapter(model: Any, out_dir: Path, seed: int, base_name: str = "",
                 target_modules: str | Sequence[str] = ATTENTION) -> Path:
    """Save a rank-8 LoRA adapter for `model` (a transformers model, changed in place) into `out_dir`.

    A and B are both random (peft's default B = 0 would be a no-op) and scaled up (alpha 64), so each
    adapter changes what the model says. `base_name` is what adapter_config.json says it was made for.
    `target_modules`: module names, or one regex (peft's full-match form; how a speech-in model's adapter
    keeps to its language model).
    """
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=targets, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out_dir)
    if base_name:  # written afterwards: peft would look a name up on the model hub while saving
        config_file = out_dir / "adapter_config.json"
        saved = json.loads(config_file.read_text())
        config_file.write_text(json.dumps({**saved, "base_model_name_or_path": base_name}))
    return out_dir
