"""What the vLLM engine hands vLLM for a speech request (argument building, checked without vLLM).

Both ways a checkpoint lays out audio: Qwen2-Audio's chat template (prompt text with one placeholder per
window, vLLM's processor expands it) and Voxtral's mistral-common (prompt ids with the [AUDIO] tokens
already laid out); the audio goes as `multi_modal_data`. Plus the engine arguments a mistral-format folder
needs. The real engines run these on vLLM's CPU build (Qwen2-Audio) and on a GPU (`make test-gpu`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from voxgrid.services.llm.assets import TINY_QWEN2_AUDIO, TINY_VOXTRAL, resolve_model
from voxgrid.services.llm.audio_input import speech_input_from_processor
from voxgrid.services.llm.engines.base import Message, RequestError
from voxgrid.services.llm.engines.vllm_engine import VllmEngine, engine_args
from voxgrid.services.llm.speech_prompt import PromptEncoder

from tests.llm.conftest import llm_settings

RATE = 16000


def offline_engine(model: str, context: int = 4096) -> VllmEngine:
    """A VllmEngine with what `start` sets for a speech-in model, minus vLLM itself."""
    from transformers import AutoProcessor

    engine = VllmEngine(llm_settings(engine="vllm", model=model, max_audio_s=45))
    engine.processor = AutoProcessor.from_pretrained(resolve_model(model))
    engine.tokenizer = engine.processor.tokenizer
    engine.speech, engine._audio_token_id = speech_input_from_processor(engine.processor, 45)
    engine._prompts = PromptEncoder(engine.processor, engine.tokenizer, engine.speech.sample_rate_hz)
    engine.context_len = context
    return engine


def conversation(*seconds: float) -> tuple[Message, ...]:
    windows = tuple(np.zeros(int(s * RATE), np.float32) for s in seconds)
    return (Message("system", "Be brief."), Message("user", "Answer this.", audio=windows, audio_rate_hz=RATE))


def test_voxtral_prompt_is_mistral_common_ids_with_the_audio() -> None:
    engine = offline_engine(TINY_VOXTRAL)
    prompt, length = engine._prompt(conversation(3.0, 10.0), (), for_generate=True)
    ids = prompt["prompt_token_ids"]
    assert "prompt" not in prompt and length == len(ids)
    audio_id, begin_audio = engine.tokenizer.convert_tokens_to_ids(["[AUDIO]", "[BEGIN_AUDIO]"])
    assert ids.count(audio_id) == 2 * 375 and ids.count(begin_audio) == 2  # each clip padded to a 30 s chunk
    assert [len(samples) for samples, _ in prompt["multi_modal_data"]["audio"]] == [3 * RATE, 10 * RATE]
    assert {rate for _, rate in prompt["multi_modal_data"]["audio"]} == {RATE}
    # A text-only prompt goes through mistral-common too: the prefix of the audio turn's ids.
    text_ids = engine._prompt_ids((Message("system", "Be brief."),
                                   Message("user", "Answer this.")), (), for_generate=True)
    assert ids[: ids.index(begin_audio)] == text_ids[: ids.index(begin_audio)]


def test_voxtral_prompt_over_the_context_is_refused_by_its_exact_length() -> None:
    engine = offline_engine(TINY_VOXTRAL, context=600)
    with pytest.raises(RequestError, match="context window"):
        engine._prompt(conversation(3.0, 3.0), (), for_generate=True)  # 2 x 375 audio tokens > 600


def test_qwen2_audio_prompt_is_template_text_with_one_placeholder_per_window() -> None:
    engine = offline_engine(TINY_QWEN2_AUDIO)
    prompt, estimate = engine._prompt(conversation(3.0, 10.0), (), for_generate=True)
    assert prompt["prompt"].count("<|audio_bos|><|AUDIO|><|audio_eos|>") == 2
    assert len(prompt["multi_modal_data"]["audio"]) == 2 and estimate >= 13 * 25


def test_mistral_format_folders_get_vllms_mistral_modes(tmp_path: Path) -> None:
    (tmp_path / "tekken.json").write_text("{}")
    args = engine_args(llm_settings(engine="vllm", model=str(tmp_path)))
    assert args["tokenizer_mode"] == "mistral" and "config_format" not in args
    (tmp_path / "params.json").write_text("{}")
    args = engine_args(llm_settings(engine="vllm", model=str(tmp_path)))
    assert (args["config_format"], args["load_format"]) == ("mistral", "mistral")
    dummy = engine_args(llm_settings(engine="vllm", model=str(tmp_path), load_format="dummy"))
    assert dummy["load_format"] == "dummy"  # random weights of the real shape stay random
    plain = engine_args(llm_settings(engine="vllm", model=resolve_model(TINY_QWEN2_AUDIO)))
    assert "tokenizer_mode" not in plain and "config_format" not in plain
