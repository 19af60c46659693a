"""Speech in the LLM API (hybrid mode), over loopback gRPC, on the transformers engine.

A speech-in replica serves the real Qwen2-Audio architecture with random weights (`tiny-random-qwen2-audio`,
built once into the model cache); a text replica serves the tiny random Qwen2. The speech is real: flite
says a sentence, sent as PCM16 the way a client sends it.
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
from prometheus_client import REGISTRY
from voxgrid.services.llm.app import LlmRuntime
from voxgrid.services.llm.assets import TINY_QWEN2_AUDIO, resolve_model
from voxgrid.services.llm.client import ChatStream, system, user, user_audio

from tests.conftest import synthesize_speech
from tests.llm.conftest import running_server, wait_idle
from voxgrid.audio import StreamResampler, decode, encode, pcm16_spec
from voxgrid.client import channel
from voxgrid.server.chassis import ServiceServer
from voxgrid.v1 import audio_pb2, llm_pb2, llm_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

Server = tuple[ServiceServer, LlmRuntime]
RATE = 16000
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]
PROMPT = "You are a helpful voice agent. Keep answers short."


def greedy(n: int) -> audio_pb2.SamplingParams:
    return audio_pb2.SamplingParams(temperature=0.0, max_tokens=n)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """About 3 s of real speech at 16 kHz, exactly as the server decodes it from PCM16."""
    samples, rate = synthesize_speech("Hello, I would like to book a table for two tonight.",
                                      Path(tmp_path_factory.mktemp("speech")) / "hello.wav")
    at_16k = np.concatenate([StreamResampler(rate, RATE).process(samples, last=True)])
    return decode(encode(at_16k, pcm16_spec(RATE)), pcm16_spec(RATE))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hearing() -> AsyncIterator[Server]:
    """The speech-in replica: float32 (greedy output then matches a reference run token for token), audio up to
    45 s per message (one 30 s window plus a second), 2 running requests."""
    async for pair in running_server(model=TINY_QWEN2_AUDIO, dtype="float32", max_model_len=4096, max_running=2,
                                     max_requests_per_stream=4, max_audio_s=45):
        yield pair


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def deaf() -> AsyncIterator[Server]:
    async for pair in running_server(max_model_len=512):
        yield pair


@pytest_asyncio.fixture(loop_scope="module")
async def ch(hearing: Server) -> AsyncIterator[Any]:
    async with channel(hearing[0].address) as opened:
        yield opened


def reference_answer(samples: np.ndarray, tokens: int) -> str:
    """What transformers' own `generate` answers for the same checkpoint, prompt and audio (greedy)."""
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    path = resolve_model(TINY_QWEN2_AUDIO)
    processor = AutoProcessor.from_pretrained(path)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    conversation = [{"role": "system", "content": PROMPT},
                    {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Answer this."}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], audio=[samples], sampling_rate=RATE, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=tokens)
    return processor.tokenizer.decode(out[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)


async def test_list_models_says_which_model_hears_and_how(ch: Any, deaf: Server) -> None:
    (model,) = (await llm_pb2_grpc.LanguageModelStub(ch).ListModels(audio_pb2.ListModelsRequest())).models
    assert model.name == TINY_QWEN2_AUDIO and model.accepts_audio and model.context_length == 4096
    spec = model.speech_input
    assert (spec.sample_rate_hz, spec.max_clip_ms, spec.max_audio_ms, spec.tokens_per_second) == (16000, 30000,
                                                                                                   45000, 25)
    assert audio_pb2.AUDIO_ENCODING_MULAW in spec.encodings
    async with channel(deaf[0].address) as text_ch:
        (text_model,) = (await llm_pb2_grpc.LanguageModelStub(text_ch).ListModels(
            audio_pb2.ListModelsRequest())).models
    assert not text_model.accepts_audio and not text_model.HasField("speech_input")


def heard_seconds() -> float:
    return REGISTRY.get_sample_value("voxgrid_llm_audio_input_seconds_total") or 0.0


async def test_speech_request_streams_what_the_model_hears(ch: Any, speech: np.ndarray, hearing: Server) -> None:
    before = heard_seconds()
    async with ChatStream(ch, session_id="hybrid") as chat:
        heard = await chat.generate("speech", [system(PROMPT), user_audio(speech, RATE, "Answer this.")], greedy(8))
        # Other audio, same text: the answer follows the audio (a model that ignored it would repeat itself).
        noise = np.random.default_rng(0).uniform(-0.3, 0.3, len(speech)).astype(np.float32)
        other = await chat.generate("noise", [system(PROMPT), user_audio(noise, RATE, "Answer this.")], greedy(8))
    assert not heard.errors and heard.deltas >= 2, heard.errors
    assert heard.done is not None and heard.done.finish_reason == llm_pb2.FINISH_REASON_LENGTH
    # ~3 s of audio at 25 tokens per second are in the prompt.
    assert heard.done.prompt_tokens >= 25 * len(speech) // RATE
    assert heard.text == await asyncio.to_thread(reference_answer, speech, 8)
    assert other.text != heard.text
    assert heard_seconds() - before == pytest.approx(2 * len(speech) / RATE)
    # Two at once (decoded in one batch) answer exactly what one alone does.
    async with ChatStream(ch) as first, ChatStream(ch) as second:
        together = await asyncio.gather(*(
            chat.generate("same", [system(PROMPT), user_audio(speech, RATE, "Answer this.")], greedy(8))
            for chat in (first, second)))
    assert [r.text for r in together] == [heard.text, heard.text]
    await wait_idle(hearing[1])


async def test_a_model_that_cannot_hear_answers_failed_precondition_naming_it(deaf: Server, speech: np.ndarray) -> None:
    async with channel(deaf[0].address) as text_ch, ChatStream(text_ch) as chat:
        refused = await chat.generate("a", [user_audio(speech, RATE)], greedy(4))
        refused_prewarm = await chat.prewarm([user_audio(speech, RATE)])
        fine = await chat.generate("b", [user("Still there?")], greedy(3))
    assert [e.code for e in refused.errors] == [FAILED_PRECONDITION]
    assert "'tiny-random-qwen2' cannot hear" in refused.errors[0].message
    assert refused.done is not None and refused.done.finish_reason == llm_pb2.FINISH_REASON_ERROR
    assert refused_prewarm is not None and refused_prewarm.error.code == FAILED_PRECONDITION
    assert fine.done is not None and fine.done.finish_reason == llm_pb2.FINISH_REASON_LENGTH


async def test_audio_over_one_window_is_split_and_over_the_limit_refused(ch: Any, speech: np.ndarray) -> None:
    forty_seconds = np.tile(speech, int(np.ceil(40 * RATE / len(speech))))[: 40 * RATE]
    fifty_seconds = np.tile(forty_seconds, 2)[: 50 * RATE]
    async with ChatStream(ch) as chat:
        split = await chat.generate("40s", [user_audio(forty_seconds, RATE)], greedy(3))
        refused = await chat.generate("50s", [user_audio(fifty_seconds, RATE)], greedy(3))
    assert not split.errors and split.done is not None, split.errors
    # Two windows (30 s + 10 s), each one placeholder the processor expanded: 25 tokens per second in all.
    assert split.done.prompt_tokens >= 40 * 25
    assert [e.code for e in refused.errors] == [INVALID]
    assert "50.0 s" in refused.errors[0].message and "at most 45 s" in refused.errors[0].message


async def test_bad_audio_is_refused_while_a_neighbour_on_the_same_engine_completes(
    ch: Any, speech: np.ndarray
) -> None:
    good = user_audio(speech, RATE)
    odd_rate = llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, audio=llm_pb2.AudioClip(
        format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=11025),
        data=good.audio.data))
    half_sample = llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, audio=llm_pb2.AudioClip(
        format=good.audio.format, data=good.audio.data + b"\x00"))
    no_format = llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, audio=llm_pb2.AudioClip(data=good.audio.data))
    assistant_audio = llm_pb2.ChatMessage(role=llm_pb2.ROLE_ASSISTANT, audio=good.audio)
    too_short = user_audio(speech[: RATE // 50], RATE)
    opus = llm_pb2.ChatMessage(role=llm_pb2.ROLE_USER, audio=llm_pb2.AudioClip(
        format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_OPUS, sample_rate_hz=16000),
        data=good.audio.data[:4000]))
    async with ChatStream(ch) as chat, ChatStream(ch) as neighbour_chat:
        neighbour = neighbour_chat.start("neighbour", [system(PROMPT), good], greedy(40))
        bad = await asyncio.gather(*(chat.generate(f"bad{i}", [m], greedy(4)) for i, m in enumerate(
            [odd_rate, half_sample, no_format, assistant_audio, too_short, opus])))
        done = await neighbour_chat.collect(neighbour)
    for result, words in zip(bad, ["sample_rate_hz 11025", "whole number", "format is required",
                                   "only ROLE_USER", "at least 100 ms", "PCM16, MULAW or ALAW"],
                                  strict=True):
        assert [e.code for e in result.errors] == [INVALID], (words, result.errors)
        assert words in result.errors[0].message
        assert result.done is not None and result.done.finish_reason == llm_pb2.FINISH_REASON_ERROR
    assert not done.errors and done.done is not None
    assert done.done.finish_reason == llm_pb2.FINISH_REASON_LENGTH and done.done.completion_tokens == 40


async def test_prewarm_with_audio_warms_the_text_before_it(ch: Any, speech: np.ndarray) -> None:
    history = [system(PROMPT + " " + "Remember the booking rules. " * 20), user("Hi"),
               llm_pb2.ChatMessage(role=llm_pb2.ROLE_ASSISTANT, content="Hello! How can I help?")]
    async with ChatStream(ch, session_id="hybrid-prewarm") as chat:
        prewarmed = await chat.prewarm([*history, user_audio(speech[: RATE], RATE)])
        result = await chat.generate("warm", [*history, user_audio(speech, RATE)], greedy(4))
    assert prewarmed is not None and prewarmed.WhichOneof("event") == "prewarmed", prewarmed
    # The warmed prefix is the text up to the audio: served from the cache, the audio computed fresh.
    assert result.done is not None and not result.errors
    assert result.done.cached_prompt_tokens >= prewarmed.prewarmed.prompt_tokens - 1 > 100
    assert result.done.prompt_tokens - result.done.cached_prompt_tokens >= 25 * len(speech) // RATE
