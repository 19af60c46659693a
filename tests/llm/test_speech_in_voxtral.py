"""Voxtral through its real processor, and LoRA adapters on a speech-in model, on the transformers engine.

The replica serves `tiny-random-voxtral`: the real Voxtral architecture with random weights and its real
processor (VoxtralProcessor over mistral-common's tokenizer, read from a small tekken.json built offline),
so the [BEGIN_AUDIO][AUDIO]... layout comes from mistral-common, not from this repository. It serves two
peft adapters made here with target_modules restricted to the language model. Speech is real (flite), sent
as PCM16 over loopback gRPC.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
from voxgrid.services.llm.adapters import LANGUAGE_MODEL_TARGETS, AdapterError
from voxgrid.services.llm.app import LlmRuntime
from voxgrid.services.llm.assets import TINY_VOXTRAL, resolve_model
from voxgrid.services.llm.client import ChatStream, Result, assistant, system, user, user_audio
from voxgrid.services.llm.engines.transformers_engine import TransformersEngine

from tests.conftest import synthesize_speech
from tests.llm.conftest import llm_settings, running_server, wait_idle
from tests.llm.lora import ATTENTION, make_adapter
from voxgrid.audio import StreamResampler, decode, encode, pcm16_spec
from voxgrid.client import channel
from voxgrid.server.chassis import ServiceServer
from voxgrid.v1 import audio_pb2, llm_pb2, llm_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

Server = tuple[ServiceServer, LlmRuntime]
RATE = 16000
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
PROMPT = "Be brief."
ASK = "Answer this."


def greedy(n: int) -> audio_pb2.SamplingParams:
    return audio_pb2.SamplingParams(temperature=0.0, max_tokens=n)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """About 3 s of real speech at 16 kHz, exactly as the server decodes it from PCM16."""
    samples, rate = synthesize_speech("Hello, I would like to book a table for two tonight.",
                                      Path(tmp_path_factory.mktemp("speech")) / "hello.wav")
    at_16k = StreamResampler(rate, RATE).process(samples, last=True)
    return decode(encode(at_16k, pcm16_spec(RATE)), pcm16_spec(RATE))


def load_voxtral() -> Any:
    import torch
    from transformers import VoxtralForConditionalGeneration

    return VoxtralForConditionalGeneration.from_pretrained(resolve_model(TINY_VOXTRAL), dtype=torch.float32)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("voxtral-adapters")
    return {name: make_adapter(load_voxtral(), folder / name, seed, TINY_VOXTRAL,
                               target_modules=LANGUAGE_MODEL_TARGETS)
            for name, seed in (("support", 1), ("sales", 2))}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def voxtral(adapters: dict[str, Path]) -> AsyncIterator[Server]:
    """float32 (greedy output then matches a reference run token for token), up to 45 s of audio a message."""
    async for pair in running_server(model=TINY_VOXTRAL, dtype="float32", max_model_len=4096, max_running=2,
                                     max_requests_per_stream=4, max_audio_s=45,
                                     lora_adapters=",".join(f"{n}={p}" for n, p in adapters.items())):
        yield pair


@pytest_asyncio.fixture(loop_scope="module")
async def ch(voxtral: Server) -> AsyncIterator[Any]:
    async with channel(voxtral[0].address) as opened:
        yield opened


def reference_answer(samples: np.ndarray, tokens: int) -> str:
    """What transformers' own `generate` answers, the prompt built by VoxtralProcessor.apply_chat_template."""
    import torch
    from transformers import AutoProcessor
    from voxgrid.services.llm.speech_prompt import wav_base64

    processor = AutoProcessor.from_pretrained(resolve_model(TINY_VOXTRAL))
    conversation = [{"role": "system", "content": PROMPT},
                    {"role": "user", "content": [{"type": "audio", "base64": wav_base64(samples, RATE)},
                                                 {"type": "text", "text": ASK}]}]
    inputs = processor.apply_chat_template(conversation, tokenize=True, return_dict=True)
    with torch.inference_mode():
        out = load_voxtral().eval().generate(**inputs, do_sample=False, max_new_tokens=tokens)
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


async def test_list_models_describes_voxtral_hearing_and_its_adapters(ch: Any) -> None:
    (model,) = (await llm_pb2_grpc.LanguageModelStub(ch).ListModels(audio_pb2.ListModelsRequest())).models
    assert model.name == TINY_VOXTRAL and model.accepts_audio
    spec = model.speech_input
    # 375 [AUDIO] tokens per 30 s chunk (12.5 a second, rounded up for budgeting), counted by mistral-common.
    assert (spec.sample_rate_hz, spec.max_clip_ms, spec.max_audio_ms, spec.tokens_per_second) == (16000, 30000,
                                                                                                   45000, 13)
    assert sorted(a.name for a in model.adapters) == ["sales", "support"]


async def test_speech_request_streams_what_voxtral_hears(ch: Any, speech: np.ndarray, voxtral: Server) -> None:
    async with ChatStream(ch, session_id="voxtral") as chat:
        heard = await chat.generate("speech", [system(PROMPT), user_audio(speech, RATE, ASK)], greedy(8))
        noise = np.random.default_rng(0).uniform(-0.3, 0.3, len(speech)).astype(np.float32)
        other = await chat.generate("noise", [system(PROMPT), user_audio(noise, RATE, ASK)], greedy(8))
    assert not heard.errors and heard.deltas >= 2, heard.errors
    assert heard.done is not None and heard.done.finish_reason == llm_pb2.FINISH_REASON_LENGTH
    # mistral-common pads the clip to one 30 s chunk: 375 [AUDIO] tokens, plus [BEGIN_AUDIO] and the text.
    assert 375 < heard.done.prompt_tokens < 375 + 60
    assert heard.text == await asyncio.to_thread(reference_answer, speech, 8)
    assert other.text != heard.text  # the answer follows the audio
    await wait_idle(voxtral[1])


async def test_audio_over_one_chunk_is_split_and_over_the_limit_refused(ch: Any, speech: np.ndarray) -> None:
    forty_seconds = np.tile(speech, int(np.ceil(40 * RATE / len(speech))))[: 40 * RATE]
    fifty_seconds = np.tile(forty_seconds, 2)[: 50 * RATE]
    async with ChatStream(ch) as chat:
        split = await chat.generate("40s", [user_audio(forty_seconds, RATE)], greedy(3))
        refused = await chat.generate("50s", [user_audio(fifty_seconds, RATE)], greedy(3))
    assert not split.errors and split.done is not None, split.errors
    # Two 30 s chunks (30 s + 10 s padded): 2 x 375 [AUDIO] tokens.
    assert 750 < split.done.prompt_tokens < 750 + 40
    assert [e.code for e in refused.errors] == [INVALID]
    assert "50.0 s" in refused.errors[0].message and "at most 45 s" in refused.errors[0].message


async def test_sessions_on_different_adapters_with_audio_each_answer_as_alone(ch: Any, speech: np.ndarray,
                                                                              voxtral: Server) -> None:
    async def ask(adapter: str, session: str) -> Result:
        async with ChatStream(ch, session_id=session, adapter=adapter) as chat:
            return await chat.generate("q", [system(PROMPT), user_audio(speech, RATE, ASK)], greedy(10))

    alone = {name: await ask(name, f"alone-{name}") for name in ("support", "sales", "")}
    together = await asyncio.gather(*(ask(name, f"together-{name}") for name in ("support", "sales", "")))
    for result in (*alone.values(), *together):
        assert not result.errors and result.done is not None and result.done.completion_tokens == 10, result.errors
    assert [r.text for r in together] == [alone["support"].text, alone["sales"].text, alone[""].text]
    assert len({r.text for r in alone.values()}) == 3  # each adapter changes what the model says
    await wait_idle(voxtral[1])


async def test_an_adapter_that_also_adapts_the_audio_encoder_stops_the_replica_at_start(
    tmp_path: Path,
) -> None:
    whole_model = make_adapter(load_voxtral(), tmp_path / "whole", 3, TINY_VOXTRAL, target_modules=ATTENTION)
    engine = TransformersEngine(llm_settings(model=TINY_VOXTRAL, lora_adapters=f"whole={whole_model}"))
    with pytest.raises(AdapterError) as refused:
        await engine.start()
    message = str(refused.value)
    assert "adapter 'whole'" in message and "audio_tower" in message and "outside the language model" in message
    assert LANGUAGE_MODEL_TARGETS in message


async def test_a_conversation_mistral_common_refuses_is_invalid_argument_and_the_stream_goes_on(
    ch: Any, speech: np.ndarray
) -> None:
    async with ChatStream(ch) as chat:
        refused = await chat.generate("ends-with-assistant", [user("Hi"), assistant("Hello!")], greedy(3))
        fine = await chat.generate("fine", [user_audio(speech, RATE, ASK)], greedy(3))
    assert [e.code for e in refused.errors] == [INVALID]
    assert "mistral-common" in refused.errors[0].message and "assistant" in refused.errors[0].message
    assert fine.done is not None and fine.done.finish_reason == llm_pb2.FINISH_REASON_LENGTH and not fine.errors
