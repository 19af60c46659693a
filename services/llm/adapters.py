"""LoRA adapters a replica serves: found in a folder at start, checked against the base model before it loads.

An operator drops a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) into
`adapters_dir` (a volume in the chart); its folder name is the name a profile's `adapter` or a
ChatConfig.adapter uses. `lora_adapters` (name=path pairs) adds more. Every adapter is checked against
the served model's config from the adapter's own config and tensor shapes (read from the safetensors
header, nothing loaded), at start: an adapter made for another base model stops the replica with a
message naming it and the mismatch, instead of failing inside the engine at some call's first request.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("voxgrid.llm.adapters")

_LORA_WEIGHT = re.compile(r"(\w+)\.lora_([AB])(?:\.\w+)?\.weight$")  # ...<module>.lora_A.weight
_LAYER = re.compile(r"\blayers\.(\d+)\.")
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


class AdapterError(ValueError):
    """An adapter cannot be served with this model; the message names it and why."""


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    path: str
    rank: int
    base_model: str


def discover(folder: Path) -> dict[str, str]:
    """{name: path} of the adapter folders directly inside `folder` (each named by its folder).

    Folders without adapter_config.json (a volume's lost+found) are skipped with a log line; a missing
    `folder` is an error, since the operator asked for it.
    """
    if not folder.is_dir():
        raise AdapterError(f"adapters_dir {folder} is not a folder")
    found: dict[str, str] = {}
    for sub in sorted(folder.iterdir()):
        if not sub.is_dir() or sub.name.startswith("."):
            continue
        if (sub / CONFIG).exists():
            found[sub.name] = str(sub)
        else:
            log.info("adapters_dir: %s has no %s, skipped", sub, CONFIG)
    return found


def served_adapters(lora_adapters: dict[str, str], adapters_dir: Path | None) -> dict[str, str]:
    """Every adapter of the replica, {name: path}: `lora_adapters` plus what `adapters_dir` holds."""
    found = discover(adapters_dir) if adapters_dir is not None else {}
    both = sorted(set(found) & set(lora_adapters))
    if both:
        raise AdapterError(f"adapter name(s) {', '.join(both)} are both in adapters_dir and lora_adapters: "
                           "rename one")
    return {**lora_adapters, **found}


def adapter_mismatch(path: str, model: Any, max_rank: int) -> str | None:
    """Why the LoRA adapter in `path` cannot serve with this base model (None when it can).

    `model` is the served model's Hugging Face (text) config; shapes are read, nothing is loaded.
    """
    folder = Path(path)
    config_file, weights = folder / CONFIG, folder / WEIGHTS
    if not config_file.exists() or not weights.exists():
        return f"{path} is not a PEFT LoRA adapter (it needs {CONFIG} and {WEIGHTS})"
    config = json.loads(config_file.read_text())
    rank = int(config.get("r", 0))
    if rank > max_rank:
        return f"its rank {rank} is over max_lora_rank {max_rank} (raise VOXGRID_LLM_MAX_LORA_RANK)"
    heads = model.num_attention_heads
    head_dim = getattr(model, "head_dim", None) or model.hidden_size // heads
    kv = (getattr(model, "num_key_value_heads", None) or heads) * head_dim
    hidden, inner = model.hidden_size, model.intermediate_size
    shapes = {  # module: (in_features, out_features) in the served model
        "q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
        "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inner), "up_proj": (hidden, inner),
        "down_proj": (inner, hidden),
    }
    from safetensors import safe_open

    base = config.get("base_model_name_or_path") or "another model"
    with safe_open(str(weights), framework="pt") as tensors:
        for name in tensors.keys():
            match, layer = _LORA_WEIGHT.search(name), _LAYER.search(name)
            if match is None:
                continue
            module, side = match[1], match[2]
            if module not in shapes or layer is None:
                return f"it adapts `{module}`, which the served model's layers do not have (it was made for {base})"
            if int(layer[1]) >= model.num_hidden_layers:
                return (f"it adapts layer {layer[1]}, the served model has {model.num_hidden_layers} layers "
                        f"(it was made for {base})")
            shape = tensors.get_slice(name).get_shape()
            found = shape[1] if side == "A" else shape[0]
            wanted = shapes[module][0] if side == "A" else shapes[module][1]
            if found != wanted:
                kind = "input" if side == "A" else "output"
                return f"its `{module}` {kind} size is {found}, the served model's is {wanted} (it was made for {base})"
    return None


def text_config(model_config: Any) -> Any:
    """The language model's part of a (possibly multimodal) Hugging Face config."""
    get = getattr(model_config, "get_text_config", None)
    return get() if callable(get) else model_config


# peft's prefix on a saved adapter's tensor names (PeftModel.base_model.model = the wrapped model).
_PEFT_PREFIX = "base_model.model."
LANGUAGE_MODEL_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"


def outside_language_model(path: str, language_model: str) -> str | None:
    """Why the adapter in `path` adapts more than the language model under module path `language_model`.

    A speech-in model's audio encoder has `q_proj`/`k_proj`/... too (often of the same size), so a plain
    `target_modules=["q_proj", ...]` adapts the encoder as well, which the shape check cannot tell apart.
    """
    from safetensors import safe_open

    with safe_open(str(Path(path) / WEIGHTS), framework="pt") as tensors:
        for name in tensors.keys():
            match = _LORA_WEIGHT.search(name)
            module = name[: match.start()] + match[1] if match else name
            module = module.removeprefix(_PEFT_PREFIX)
            if match is not None and not module.startswith(language_model + "."):
                return (f"it adapts `{module}`, outside the language model (`{language_model}`): make it with "
                        f"target_modules restricted to the language model, e.g. r'{LANGUAGE_MODEL_TARGETS}'")
    return None


def check_adapters(paths: dict[str, str], model_config: Any, model_name: str,
                   max_rank: int = 1 << 16, language_model: str | None = None) -> list[AdapterSpec]:
    """Every adapter checked against the served model; AdapterError lists each one that does not fit.

    `language_model`: on a speech-in model, the language model's module path; adapters must stay inside it.
    """
    model = text_config(model_config)
    specs, problems = [], []
    for name, path in sorted(paths.items()):
        problem = None
        if language_model is not None and (Path(path) / WEIGHTS).exists():  # the precise reason first
            problem = outside_language_model(path, language_model)
        problem = problem or adapter_mismatch(path, model, max_rank)
        if problem is not None:
            problems.append(f"adapter {name!r} ({path}): {problem}")
            continue
        config = json.loads((Path(path) / CONFIG).read_text())
        specs.append(AdapterSpec(name, path, int(config.get("r", 0)), str(config.get("base_model_name_or_path", ""))))
    if problems:
        raise AdapterError(f"LoRA adapters that cannot be served with {model_name!r}: " + "; ".join(problems)
                           + ". Remove them or serve the model they were trained for.")
    return specs


BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


def load_peft(model: Any, specs: list[AdapterSpec]) -> Any:
    """`model` wrapped by peft with every adapter loaded side by side (transformers engine).

    The engine picks each forward's rows' adapters through `engines/adapter_routing.py` (base only, one
    adapter, or per-row `adapter_names` with BASE for the base model): requests on different adapters share
    one batched step and each gets what its adapter gives alone.
    """
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise AdapterError(f"serving LoRA adapters with the transformers engine needs peft ({exc}): "
                           "pip install 'voxgrid[llm]'") from exc
    first, *rest = specs
    wrapped = PeftModel.from_pretrained(model, first.path, adapter_name=first.name)
    for spec in rest:
        wrapped.load_adapter(spec.path, adapter_name=spec.name)
    return wrapped.eval()
