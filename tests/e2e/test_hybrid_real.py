"""Hybrid mode end to end: real STT (VAD, endpoint, transcript), a real speech-in LLM, real TTS, over loopback gRPC.

The LLM replica serves the real Qwen2-Audio architecture with random weights (`tiny-random-qwen2-audio`): its
words are noise, but the audio really goes through its processor and audio encoder, so what is checked here is
the orchestration: the endpoint starts the answer from audio, the transcript arrives in parallel and lands in
the history, the turn record names the critical path, barge-in keeps only what was heard. A second orchestrator
in front of the text-only tiny Qwen2 shows the refusal at session start.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
import soxr
from prometheus_client import REGISTRY
from voxgrid.orchestrator.app import AgentRuntime
from voxgrid.orchestrator.client import TE, AgentCall, session_config
from voxgrid.orchestrator.settings import Settings as OrchestratorSettings
from voxgrid.services.llm.assets import TINY_QWEN2, TINY_QWEN2_AUDIO

from tests.conftest import synthesize_speech
from voxgrid.client import channel
from voxgrid.server.chassis import start_server
from voxgrid.v1 import agent_pb2, agent_pb2_grpc, audio_pb2

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]
RATE = 16000
HYBRID = agent_pb2.AGENT_MODE_HYBRID


def speech(text: str, speech_dir: Any) -> np.ndarray:
    x, rate = synthesize_speech(text, speech_dir / (text[:40].replace(" ", "_").replace("?", "") + ".wav"))
    return soxr.resample(x, rate, RATE).astype("float32")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stacks() -> AsyncIterator[tuple[agent_pb2_grpc.AgentStub, agent_pb2_grpc.AgentStub, Any]]:
    """(hybrid orchestrator over the speech-in LLM, orchestrator over a text-only LLM, the speech-in LLM runtime)."""
    from voxgrid.services.llm.app import LlmRuntime, LlmSettings
    from voxgrid.services.stt.app import SttRuntime, SttSettings
    from voxgrid.services.tts.app import TtsRuntime, TtsSettings

    llm = dict(host="127.0.0.1", port=0, metrics_port=0, torch_threads=0)
    async with contextlib.AsyncExitStack() as stack:
        servers = {}
        for name, runtime_cls, settings in (
                ("stt", SttRuntime, SttSettings(port=0)),
                ("llm", LlmRuntime, LlmSettings(**llm, model=TINY_QWEN2_AUDIO, dtype="float32", max_model_len=2048)),
                ("deaf", LlmRuntime, LlmSettings(**llm, model=TINY_QWEN2, max_model_len=512)),
                ("tts", TtsRuntime, TtsSettings(port=0))):
            runtime = runtime_cls(settings)
            servers[name] = (await stack.enter_async_context(start_server(runtime, settings)), runtime)
        stubs = []
        for llm_name in ("llm", "deaf"):
            settings = OrchestratorSettings(port=0, stt_backends=servers["stt"][0].address,
                                            llm_backends=servers[llm_name][0].address,
                                            tts_backends=servers["tts"][0].address, max_tokens=24)
            orch = await stack.enter_async_context(start_server(AgentRuntime(settings), settings))
            ch = await stack.enter_async_context(channel(orch.address))
            stubs.append(agent_pb2_grpc.AgentStub(ch))
        yield stubs[0], stubs[1], servers["llm"][1]


def greedy(n: int) -> audio_pb2.SamplingParams:
    return audio_pb2.SamplingParams(temperature=0.0, max_tokens=n)


async def test_hybrid_turns_from_audio_with_the_transcript_off_the_critical_path(stacks, speech_dir) -> None:
    stub, _, _ = stacks
    heard_before = REGISTRY.get_sample_value("voxgrid_llm_audio_input_seconds_total") or 0.0
    async with AgentCall(stub, session_config(mode=HYBRID, sampling=greedy(16))) as call:
        for turn_id, text in ((1, "What is the capital of France?"), (2, "And what about Germany?")):
            await call.stream(speech(text, speech_dir), RATE)
            await call.silence(120, until=lambda t=turn_id: call.turn_over(t)(call.record) or call.done.is_set())
            assert call.error is None, call.error
        finals = [f.lower() for f in call.record.finals()]
        assert any("france" in f for f in finals) and any("germany" in f for f in finals)  # transcript for the client
        lats = call.record.of("latency")
        assert [x.turn_id for x in lats] == [1, 2]
        for lat in lats:
            assert lat.mode == HYBRID
            assert list(lat.critical_path) == [agent_pb2.TURN_STAGE_ENDPOINT, agent_pb2.TURN_STAGE_LLM,
                                               agent_pb2.TURN_STAGE_TTS]
            assert lat.stt_finalization_ms == 0.0 and lat.voice_to_voice_ms > 0
            assert 1.0 < lat.llm_audio_s < 5.0  # the utterance (about 2 s of speech), not the whole call
        assert len(call.record.agent_audio(call.out_spec)) > 0
    # The LLM replica itself counted the audio it heard (each round resends the newest user turn's audio).
    heard = (REGISTRY.get_sample_value("voxgrid_llm_audio_input_seconds_total") or 0.0) - heard_before
    assert heard >= sum(x.llm_audio_s for x in lats) - 0.1


async def test_barge_in_keeps_only_what_was_heard(stacks, speech_dir) -> None:
    stub, _, _ = stacks
    async with AgentCall(stub, session_config(mode=HYBRID, sampling=greedy(200))) as call:
        await call.stream(speech("Tell me a long story about a dragon.", speech_dir), RATE)
        await call.silence(90, until=lambda: bool(call.record.events(TE.KIND_AGENT_STARTED_SPEAKING))
                           or call.done.is_set())
        assert call.error is None, call.error
        await call.silence(1.0)
        await call.stream(speech("Stop. What is the capital of Italy?", speech_dir), RATE)
        await call.silence(120, until=lambda: call.turn_over(2)(call.record) or call.done.is_set())
        interrupted = call.record.events(TE.KIND_INTERRUPTED)
        assert interrupted and interrupted[0].turn_id == 1
        heard, full = interrupted[0].heard_text, call.record.agent_text(1)
        assert len(heard) < len(full)
        assert [x.turn_id for x in call.record.of("latency")][:2] == [1, 2]


async def test_hybrid_against_an_llm_that_cannot_hear_is_refused_at_start(stacks) -> None:
    _, deaf, _ = stacks
    async with AgentCall(deaf, session_config(mode=HYBRID)) as call:
        await call.done.wait()
    assert call.error is not None and call.error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot hear" in call.error.details() and "tiny" in call.error.details()
