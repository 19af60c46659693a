"""Prompt ids (and audio encoder inputs) of a speech-in checkpoint, built by the checkpoint's own processor.

Speech-in checkpoints say where audio goes in one of two ways, and this module holds both so no engine
writes a prompt format per model:

- a Jinja chat template (Qwen2-Audio, Qwen2.5-Omni, ...): the template writes one placeholder per audio
  item, and `processor(text=..., audio=...)` expands each one to the encoder's token count and extracts
  the features;
- mistral-common (Voxtral): the tokenizer is a `MistralCommonBackend`, which tokenizes the whole chat
  request, audio included (each clip padded to whole `chunk_length_s` chunks, `frame_rate` [AUDIO]
  tokens per second of chunk, after a [BEGIN_AUDIO]); there is no template text to expand. Clips go in
  as base64 WAV (float32, lossless), the form `MistralCommonBackend.apply_chat_template` takes, and
  `processor.apply_chat_template` returns the ids with the encoder's features.

Text-only prompts of a speech-in model go through the same path, so a prewarmed text prefix and a later
audio turn tokenise alike.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from voxgrid.services.llm.chat import message_dict, render_prompt, tool_dict
from voxgrid.services.llm.engines.base import INVALID_ARGUMENT, Message, RequestError, ToolSpec


@dataclass(frozen=True)
class EncodedPrompt:
    ids: list[int]
    # The template path's prompt text (vLLM takes it with multi_modal_data); None for mistral-common.
    text: str | None = None
    # Audio encoder inputs (input_features, feature attention masks) as torch tensors, when asked for.
    audio: dict[str, Any] | None = None


def uses_mistral_common(processor_or_tokenizer: Any) -> bool:
    """True when the checkpoint's tokenizer is mistral-common's (the chat request is tokenized whole)."""
    candidates = (processor_or_tokenizer, getattr(processor_or_tokenizer, "tokenizer", None))
    return any(cls.__name__ == "MistralCommonBackend" for c in candidates for cls in type(c).__mro__)


def wav_base64(samples: np.ndarray, rate: int) -> str:
    """One audio window as base64 WAV (float32 samples: no requantisation on the way to the encoder)."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def mistral_message(message: Message) -> dict[str, Any]:
    """A message in the shape `MistralCommonBackend.apply_chat_template` takes: each window as base64 audio."""
    entry = message_dict(message)
    if message.audio:
        entry["content"] = [{"type": "audio", "base64": wav_base64(w, message.audio_rate_hz)} for w in message.audio]
        if message.content:
            entry["content"].append({"type": "text", "text": message.content})
    return entry


class PromptEncoder:
    """Messages → prompt ids (+ encoder inputs), the way this checkpoint's processor or tokenizer does it."""

    def __init__(self, processor: Any, tokenizer: Any, sample_rate_hz: int = 0) -> None:
        self.processor = processor  # None for a text-only model
        self.tokenizer = tokenizer
        self.sample_rate_hz = sample_rate_hz
        self.mistral = uses_mistral_common(tokenizer)

    def encode(self, messages: tuple[Message, ...] | list[Message], tools: tuple[ToolSpec, ...] = (),
               for_generate: bool = True, features: bool = False) -> EncodedPrompt:
        """Prompt ids; with ``features`` and audio in the messages, the audio encoder's inputs too."""
        if self.mistral:
            return self._encode_mistral(messages, tools, features)
        text = render_prompt(self.processor or self.tokenizer, messages, tools, add_generation_prompt=for_generate)
        windows = [w for m in messages for w in m.audio]
        if not windows:
            return EncodedPrompt(self.tokenizer(text, add_special_tokens=False).input_ids, text)
        inputs = self.processor(text=[text], audio=windows, sampling_rate=self.sample_rate_hz,
                                return_tensors="pt" if features else "np")
        ids = [int(i) for i in inputs["input_ids"][0]]
        return EncodedPrompt(ids, text, _encoder_inputs(inputs) if features else None)

    def _encode_mistral(self, messages: tuple[Message, ...] | list[Message], tools: tuple[ToolSpec, ...],
                        features: bool) -> EncodedPrompt:
        # mistral-common always ends a user turn with [/INST]: add_generation_prompt has nothing to add.
        conversation = [mistral_message(m) for m in messages]
        tool_list = [tool_dict(t) for t in tools] or None
        has_audio = any(m.audio for m in messages)
        try:
            if features and has_audio:
                inputs = self.processor.apply_chat_template(conversation, tools=tool_list, tokenize=True,
                                                            return_dict=True)
                return EncodedPrompt([int(i) for i in inputs["input_ids"][0]], None, _encoder_inputs(inputs))
            ids = self.tokenizer.apply_chat_template(conversation, tools=tool_list, tokenize=True, return_dict=False)
        except Exception as exc:  # mistral-common's request validation (its own exception types, pydantic's)
            if not _is_request_problem(exc):
                raise
            raise RequestError(INVALID_ARGUMENT, f"the model's tokenizer (mistral-common) refused the "
                               f"conversation: {exc}") from None
        return EncodedPrompt([int(i) for i in ids])


def _is_request_problem(exc: Exception) -> bool:
    from mistral_common.exceptions import MistralCommonException

    return isinstance(exc, (MistralCommonException, ValueError))


def _encoder_inputs(inputs: Any) -> dict[str, Any]:
    return {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
