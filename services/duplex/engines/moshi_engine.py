"""Moshi (Kyutai) as a slot-batched full-duplex model: Mimi codec + Moshi LM, N conversations per step.

The stock moshi server serves one conversation per process. Here one Mimi and one LM are put in
streaming mode for a fixed batch of `batch_size` slots (`streaming_forever`); a session joining a slot
resets only that slot (`reset_streaming(mask)`), idle slots are masked out (`set_exec_mask`), and
`LMGen(support_out_of_sync=True)` lets slots sit at different positions in their conversations.
Sampling is per slot (see slot_sampling) so a session's tokens never depend on its neighbours.

Weights: a hub id or local directory (real checkpoints, bf16 on CUDA) through moshi's loaders, or
`random-small` (a tiny random LM for CPU tests: its output is NOT speech) and `random-7b` (the real
7B architecture with random weights, for GPU capacity benchmarks).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np
from voxgrid.services.duplex.engines.base import BatchedDuplexModel, BatchStepOutput
from voxgrid.services.duplex.engines.random_weights import seed_mimi_codebooks
from voxgrid.services.duplex.engines.slot_sampling import SlotSampler, SlotSampling

log = logging.getLogger(__name__)

RANDOM_SMALL = "random-small"
RANDOM_7B = "random-7b"
SMALL_LM_OVERRIDES: dict[str, Any] = dict(
    dim=64, num_heads=4, num_layers=2, context=100, depformer_dim=64, depformer_dim_feedforward=128,
    depformer_num_heads=4, depformer_num_layers=2,
)
# Text tokens that carry no text (end-of-padding 0, padding 3), as in moshi's own server.
_SILENT_TEXT_TOKENS = (0, 3)


def _import_moshi() -> Any:
    if os.environ.get("NO_TORCH_COMPILE") is None:
        import torch

        if not torch.cuda.is_available():
            # torch.compile on CPU costs minutes of start-up for no gain at batch sizes that fit real time.
            os.environ["NO_TORCH_COMPILE"] = "1"
    try:
        from moshi.models import LMGen, loaders
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the duplex service needs the `moshi` package, which pins its own torch: build its environment "
            "with deploy/duplex-env.sh and run the service from that venv"
        ) from exc
    return LMGen, loaders


def _make_lm_gen_class(base: type) -> type:
    """LMGen whose text and audio sampling is per slot (the LM's own sampling is global)."""

    class SlotLMGen(base):  # type: ignore[misc, valid-type]
        sampler: SlotSampler

        def depformer_step(self, text_token: Any, transformer_out: Any) -> Any:
            import torch

            lm_model = self.lm_model
            prev = text_token
            tokens = []
            with lm_model.depformer.streaming(text_token.shape[0]):
                for cb in range(lm_model.dep_q):
                    logits = lm_model.forward_depformer(cb, prev[:, None, None], transformer_out)
                    prev = self.sampler.sample_audio(logits[:, 0, 0, :], cb)
                    tokens.append(prev)
            return torch.stack(tokens, dim=1)

    return SlotLMGen


class MoshiBatchModel(BatchedDuplexModel):
    """Mimi + Moshi LM stepped for all slots at once; called only from the scheduler thread."""

    engine_name = "moshi"

    def __init__(
        self,
        model: str = RANDOM_SMALL,
        batch_size: int = 4,
        device: str = "auto",
        dtype: str = "auto",
        text_temperature: float | None = None,
        audio_temperature: float | None = None,
        top_k_text: int = 25,
        top_k_audio: int = 250,
        weights_seed: int = 0,
    ) -> None:
        self.model_name = model
        self.batch_size = batch_size
        self.sample_rate = 24000
        self.frame_size = 1920
        self._device_name = device
        self._dtype_name = dtype
        self._text_temperature = text_temperature
        self._audio_temperature = audio_temperature
        self._top_k_text = top_k_text
        self._top_k_audio = top_k_audio
        self._weights_seed = weights_seed
        self._tokenizer: Any = None
        self._pending_reset = np.zeros(batch_size, dtype=bool)
        self._fresh = np.zeros(batch_size, dtype=bool)
        self._gen_defaults: dict[str, Any] = {}

    # --- loading ------------------------------------------------------------------------------------
    def load(self) -> None:
        import torch

        lm_gen_cls, loaders = _import_moshi()
        device = self._device_name
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        is_random = self.model_name in (RANDOM_SMALL, RANDOM_7B)
        dtype_name = self._dtype_name
        if dtype_name == "auto":
            dtype_name = "bfloat16" if self.device.type == "cuda" and self.model_name != RANDOM_SMALL else "float32"
        self.dtype = getattr(torch, dtype_name)

        if is_random:
            torch.manual_seed(self._weights_seed)
            lm_kwargs = dict(loaders._lm_kwargs)
            if self.model_name == RANDOM_SMALL:
                lm_kwargs.update(SMALL_LM_OVERRIDES)
            self.mimi = loaders.get_mimi(None, device=self.device)
            seed_mimi_codebooks(self.mimi, seed=self._weights_seed)
            self.lm = loaders.get_moshi_lm(None, lm_kwargs=lm_kwargs, device=self.device, dtype=self.dtype)
            log.warning(
                "duplex model %r has RANDOM weights: its audio is noise, not speech, and its text is token ids. "
                "Use it for tests and capacity benchmarks only; set the model to a Moshi checkpoint (hub id or "
                "local directory) to serve conversations.", self.model_name,
            )
        else:
            info = _checkpoint_info(loaders, self.model_name)
            self.mimi = info.get_mimi(device=self.device)
            self.lm = info.get_moshi(device=self.device, dtype=self.dtype)
            self._tokenizer = info.get_text_tokenizer()
            self._gen_defaults = dict(info.lm_gen_config)
        self.lm.eval()
        self.mimi.eval()
        self.sample_rate = int(self.mimi.sample_rate)
        self.frame_size = int(self.mimi.sample_rate / self.mimi.frame_rate)

        self.sampler = SlotSampler(
            self.batch_size, self.device,
            top_k_text=int(self._gen_defaults.get("top_k_text", self._top_k_text)),
            top_k_audio=int(self._gen_defaults.get("top_k", self._top_k_audio)),
        )
        cls = _make_lm_gen_class(lm_gen_cls)
        # Greedy inside LMGen: the text logits hook below writes the per-slot sample in as a one-hot.
        self.lm_gen = cls(self.lm, use_sampling=False, support_out_of_sync=True,
                          on_text_logits_hook=self._choose_text)
        self.lm_gen.sampler = self.sampler
        self.mimi.streaming_forever(self.batch_size)
        self.lm_gen.streaming_forever(self.batch_size)
        self._exec_mask = torch.zeros(self.batch_size, dtype=torch.bool, device=self.device)
        log.info("moshi loaded: model=%s device=%s dtype=%s slots=%d", self.model_name, self.device,
                 dtype_name, self.batch_size)

    def _choose_text(self, text_logits: Any) -> None:
        """Replace the text logits [B, 1, 1, card] in place by a one-hot of each slot's own sample."""
        tokens = self.sampler.sample_text(text_logits[:, 0, 0, :])
        text_logits.fill_(float("-inf"))
        text_logits[:, 0, 0, :].scatter_(-1, tokens[:, None], 0.0)
        self.sampler.advance(self._exec_mask)

    def warmup(self) -> None:
        """A few all-slot steps on silence, then every slot reset. No CUDA-only calls on CPU."""
        import torch

        silence = np.zeros((self.batch_size, self.frame_size), dtype=np.float32)
        active = np.ones(self.batch_size, dtype=bool)
        for slot in range(self.batch_size):
            self.configure_slot(slot, SlotSampling(0.0, 0.0, 0))
        for _ in range(4):
            self.step(silence, active)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        for slot in range(self.batch_size):
            self.configure_slot(slot, self.default_sampling())

    def default_sampling(self) -> SlotSampling:
        text = self._text_temperature
        audio = self._audio_temperature
        return SlotSampling(
            text_temperature=float(self._gen_defaults.get("temp_text", 0.7) if text is None else text),
            audio_temperature=float(self._gen_defaults.get("temp", 0.8) if audio is None else audio),
            seed=secrets.randbits(31),
        )

    # --- stepping -----------------------------------------------------------------------------------
    def configure_slot(self, slot: int, sampling: SlotSampling) -> None:
        self.sampler.configure(slot, sampling)
        self._pending_reset[slot] = True

    def step(self, pcm: np.ndarray, active: np.ndarray) -> BatchStepOutput:
        import torch

        with torch.no_grad():
            fresh = self._pending_reset & active
            if fresh.any():
                mask = torch.from_numpy(fresh).to(self.device)
                self.mimi.reset_streaming(mask)
                self.lm_gen.reset_streaming(mask)
                self._pending_reset &= ~fresh
            self._exec_mask.copy_(torch.from_numpy(active))
            self.mimi.set_exec_mask(self._exec_mask)
            self.lm_gen.set_exec_mask(self._exec_mask)

            x = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32)).to(self.device)[:, None, :]
            codes = self.mimi.encode(x)
            tokens = self.lm_gen.step(codes)  # [B, 1 + dep_q, 1]
            audio_tokens = tokens[:, 1:, :]
            ready = (audio_tokens >= 0).all(dim=2).all(dim=1) & self._exec_mask
            # The decoder advances only for slots whose output has left the model's delay.
            self.mimi.set_exec_mask(ready)
            out = self.mimi.decode(audio_tokens.clamp_min(0))
            if fresh.any():
                # As moshi's server does: the first frame is "in the past" for the model; re-apply the
                # encoder's left padding on the slot's next frame (its decoder has not run yet).
                self.mimi.reset_streaming(torch.from_numpy(fresh).to(self.device))
            return BatchStepOutput(
                pcm=out[:, 0, :].float().cpu().numpy(),
                text_tokens=tokens[:, 0, 0].cpu().numpy(),
                has_output=ready.cpu().numpy(),
            )

    # --- text and facts -----------------------------------------------------------------------------
    def text_piece(self, token: int) -> str:
        if token in _SILENT_TEXT_TOKENS or token < 0:
            return ""
        if self._tokenizer is None:
            return f"[{token}]"  # random weights have no tokenizer: the token id, bracketed
        return str(self._tokenizer.id_to_piece(token)).replace("▁", " ")

    def info(self) -> dict[str, str]:
        if not hasattr(self, "lm_gen"):
            return {"slots": str(self.batch_size), "loaded": "false"}
        return {
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "slots": str(self.batch_size),
            "frame_ms": f"{self.frame_ms:g}",
            "random_weights": str(self.model_name in (RANDOM_SMALL, RANDOM_7B)).lower(),
            "text": "token ids" if self._tokenizer is None else "sentencepiece",
        }


def _checkpoint_info(loaders: Any, model: str) -> Any:
    """A local directory (moshi's file names, optional config.json) or a hub id (HF cache)."""
    path = Path(model).expanduser()
    if not path.exists():
        return loaders.CheckpointInfo.from_hf_repo(model)
    if not path.is_dir():
        raise ValueError(f"duplex model {model!r} is a file: point it at a directory holding the Moshi "
                         f"weights, Mimi weights and text tokenizer, or at a hub id")
    config = path / "config.json"
    names = json.loads(config.read_text()) if config.exists() else {}
    return loaders.CheckpointInfo.from_hf_repo(
        str(path),
        moshi_weights=path / names.get("moshi_name", loaders.MOSHI_NAME),
        mimi_weights=path / names.get("mimi_name", loaders.MIMI_NAME),
        tokenizer=path / names.get("tokenizer_name", loaders.TEXT_TOKENIZER_NAME),
        config_path=config if config.exists() else None,
    ) if config.exists() else loaders.CheckpointInfo(
        path / loaders.MOSHI_NAME, path / loaders.MIMI_NAME, path / loaders.TEXT_TOKENIZER_NAME
    )
