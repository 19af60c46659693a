"""Speech in on vLLM's CUDA build over loopback gRPC: a real-size speech-in architecture, and greedy batching.

- Qwen2-Audio-7B's shape (config + processor, no weights: `qwen2-audio-7b-shape-only`) with
  `load_format=dummy`: the real encoder (32 layers, 1280 wide) and 7B text model at full size, so the
  audio encoder's kernels, vLLM's multimodal cache, scheduling and batching are the real ones. 1 and 32
  concurrent sessions, each with 5 s of real speech: deltas arrive, no errors, every prompt holds the
  audio's 25 tokens a second. Its logits are flat (dummy weights), so answers are compared on a model
  with peaky logits instead:
- a small random Qwen2-Audio vLLM's GPU kernels take (head size 64, large init, bf16): 32 sessions at
  once, greedy, each answers exactly what it answers alone.

The model folders come from the main venv (`make gpu-models`; the tokenizer comes from the packaged GGUF).
Run in .venv-gpu-vllm (`make test-gpu`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from voxgrid.services.llm.app import LlmRuntime
from voxgrid.services.llm.assets import SHAPE_QWEN2_AUDIO_7B, TINY_QWEN2_AUDIO
from voxgrid.services.llm.client import ChatStream, Result, system, user_audio

from tests.conftest import synthesize_speech
from tests.llm.conftest import running_server, wait_idle
from tests.llm.test_vllm_gpu import DONE_OK, built_model, greedy, noisy, require_cuda
from voxgrid.audio import StreamResampler
from voxgrid.client import channel
from voxgrid.server.chassis import ServiceServer
from voxgrid.v1 import audio_pb2, llm_pb2_grpc

pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(1800)]
Server = tuple[ServiceServer, LlmRuntime]
RATE = 16000
SECONDS = 5
PROMPT = "You are a helpful voice agent. Keep answers short."
SESSIONS = 32


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """A spoken request padded with trailing silence to 5 s at 16 kHz (an utterance as the endpointer ends it)."""
    samples, rate = synthesize_speech("Hello, I would like to book a table for two at eight tonight, please.",
                                      Path(tmp_path_factory.mktemp("speech")) / "booking.wav")
    at_16k = np.asarray(StreamResampler(rate, RATE).process(samples, last=True))[: SECONDS * RATE]
    return np.pad(at_16k, (0, SECONDS * RATE - len(at_16k))).astype(np.float32)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server_7b() -> AsyncIterator[Server]:
    require_cuda()
    async for pair in running_server(engine="vllm", model=built_model(SHAPE_QWEN2_AUDIO_7B),
                                     served_model_name="qwen2-audio-7b", load_format="dummy", max_model_len=4096,
                                     gpu_memory_utilization=0.6, max_audio_s=30):
        yield pair


async def ask(ch: Any, session: str, speech: np.ndarray, sampling: audio_pb2.SamplingParams) -> Result:
    async with ChatStream(ch, session_id=session) as chat:
        return await chat.generate("q", [system(PROMPT), user_audio(speech, RATE, "Answer the caller.")], sampling)


def assert_heard(result: Result) -> None:
    assert not result.errors and result.done is not None and result.done.finish_reason in DONE_OK, result.errors
    assert result.deltas >= 1 and result.done.completion_tokens >= 1
    assert result.done.prompt_tokens >= 25 * SECONDS  # the placeholder expanded: 25 tokens per second of audio


async def test_real_size_speech_in_model_at_1_and_32_sessions(server_7b: Server, speech: np.ndarray) -> None:
    async with channel(server_7b[0].address) as ch:
        (model,) = (await llm_pb2_grpc.LanguageModelStub(ch).ListModels(audio_pb2.ListModelsRequest())).models
        assert model.name == "qwen2-audio-7b" and model.accepts_audio
        assert (model.speech_input.max_clip_ms, model.speech_input.tokens_per_second) == (30000, 25)
        alone = await ask(ch, "one", speech, noisy(16))
        assert_heard(alone)
        together = await asyncio.gather(*(ask(ch, f"many-{i}", speech, noisy(16)) for i in range(SESSIONS)))
    for result in together:
        assert_heard(result)
        assert result.done is not None and alone.done is not None
        assert result.done.prompt_tokens == alone.done.prompt_tokens  # same audio, same prompt layout
    await wait_idle(server_7b[1])


def build_peaky_qwen2_audio(out: Path) -> Path:
    """A random Qwen2-Audio with head size 64 (vLLM's GPU kernels) and large init, so greedy choices do not
    hinge on rounding differences between batch shapes; the processor is the tiny checkpoint's."""
    import shutil

    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    tiny = Path(built_model(TINY_QWEN2_AUDIO))
    config = Qwen2AudioConfig.from_pretrained(tiny)
    config.audio_config.update(dict(d_model=256, encoder_attention_heads=4, encoder_ffn_dim=512))
    config.text_config.update(dict(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=4096, initializer_range=0.5))
    config.text_config.head_dim = 64
    torch.manual_seed(0)
    Qwen2AudioForConditionalGeneration(config).to(torch.bfloat16).save_pretrained(out)
    for item in tiny.iterdir():  # processor, tokenizer and chat template
        if item.name not in ("config.json", "generation_config.json") and not item.name.endswith(".safetensors"):
            shutil.copy(item, out / item.name)
    return out


async def test_32_greedy_speech_sessions_batched_together_each_answer_as_alone(tmp_path: Path,
                                                                              speech: np.ndarray) -> None:
    require_cuda()
    base = build_peaky_qwen2_audio(tmp_path / "peaky-qwen2-audio")
    replica = running_server(engine="vllm", model=str(base), max_model_len=2048, gpu_memory_utilization=0.2,
                             max_audio_s=30)
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, len(speech)).astype(np.float32)
    clips = [speech if i % 2 == 0 else noise for i in range(SESSIONS)]
    async with contextlib.aclosing(replica) as replicas:
        server, _runtime = await anext(replicas)
        async with channel(server.address) as ch:
            alone = [await ask(ch, f"alone-{kind}", clip, greedy(12)) for kind, clip in (("speech", speech),
                                                                                          ("noise", noise))]
            together = await asyncio.gather(*(ask(ch, f"together-{i}", clip, greedy(12))
                                              for i, clip in enumerate(clips)))
    for result in (*alone, *together):
        assert not result.errors and result.done is not None and result.done.finish_reason in DONE_OK, result.errors
    assert alone[0].text != alone[1].text  # the answer follows the audio
    assert [r.text for r in together] == [alone[i % 2].text for i in range(SESSIONS)]
