"""Hybrid mode's orchestration pinned with deterministic backends over loopback gRPC, plus its audio ring.

The fake STT's VAD is an energy threshold, so where the caller's tone starts and ends is known to the
millisecond: the clip the LLM receives can be checked against it. The real services run in
tests/e2e/test_hybrid_real.py.
"""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
from voxgrid.orchestrator.client import AgentCall, session_config
from voxgrid.orchestrator.turns import Turn, critical_path
from voxgrid.orchestrator.utterance_audio import PRE_ROLL_MS, TAIL_MS, UtteranceAudio, clip_for_model

from tests.orchestrator.conftest import RATE, tone
from tests.orchestrator.fakes import FakeLlm, echo_reply, tool_call
from voxgrid.audio import AudioSpec, decode, encode, pcm16_spec
from voxgrid.v1 import agent_pb2, audio_pb2, llm_pb2

HYBRID = agent_pb2.AGENT_MODE_HYBRID
HEARS = llm_pb2.SpeechInputSpec(sample_rate_hz=16000, max_clip_ms=30000, max_audio_ms=30000,
                                encodings=[audio_pb2.AUDIO_ENCODING_PCM16])


def hearing_llm(**kw) -> FakeLlm:
    llm = FakeLlm(**kw)
    llm.speech_input = HEARS
    return llm


def clip_seconds(message: llm_pb2.ChatMessage) -> float:
    return len(message.audio.data) / 2 / message.audio.format.sample_rate_hz


@pytest.mark.e2e
async def test_the_endpoint_sends_the_utterance_audio_and_the_transcript_lands_in_the_history(make_stack) -> None:
    async with make_stack(["what time is it", "and tomorrow"], llm=hearing_llm()) as stack:
        async with AgentCall(stack.stub, session_config(mode=HYBRID)) as call:
            await call.silence(0.4)
            for turn_id in (1, 2):
                await call.stream(tone(1.0), RATE)
                await call.silence(10, until=lambda t=turn_id: call.turn_over(t)(call.record))
            assert call.error is None
            first, second = (r.messages for r in stack.llm.requests)
            # Turn 1: the caller's speech (1 s of tone, plus pre-roll and tail), not the silence before it.
            heard = first[-1]
            assert heard.role == llm_pb2.ROLE_USER and heard.HasField("audio")
            assert heard.audio.format.sample_rate_hz == RATE
            assert 1.0 <= clip_seconds(heard) <= 1.0 + (PRE_ROLL_MS + TAIL_MS) / 1000 + 0.05
            x = decode(heard.audio.data, pcm16_spec(RATE))
            loud = np.flatnonzero(np.abs(x) > 0.1)
            assert loud[0] <= PRE_ROLL_MS / 1000 * RATE + 400 and len(x) - loud[-1] <= TAIL_MS / 1000 * RATE + 400
            # Turn 2: the older user turn goes as its transcript, only the newest carries audio.
            users = [m for m in second if m.role == llm_pb2.ROLE_USER]
            assert users[0].content == "what time is it" and not users[0].HasField("audio")
            assert users[1].HasField("audio")
            # The client saw the transcripts; the only text prefill is the persona's, when the call started
            # (no partials are prefilled: the answer starts from audio).
            assert call.record.finals() == ["what time is it", "and tomorrow"]
            assert [[m.role for m in p.messages] for p in stack.llm.prewarm_requests] == [[llm_pb2.ROLE_SYSTEM]]
            for lat in call.record.of("latency"):
                assert lat.mode == HYBRID and lat.stt_finalization_ms == 0
                assert list(lat.critical_path) == [agent_pb2.TURN_STAGE_ENDPOINT, agent_pb2.TURN_STAGE_LLM,
                                                   agent_pb2.TURN_STAGE_TTS]
                assert lat.llm_audio_s == pytest.approx(clip_seconds(heard), abs=0.25)


@pytest.mark.e2e
async def test_tools_run_in_hybrid_mode_and_the_tool_round_still_hears_the_caller(make_stack, tmp_path) -> None:
    (tmp_path / "faq.txt").write_text("Opening hours\n\nThe shop opens at nine in the morning on weekdays.\n")

    def reply(messages, tools):
        if messages[-1].role == llm_pb2.ROLE_USER and tools:
            return tool_call("lookup", query="when does the shop open")
        return echo_reply(messages, tools)

    tool = agent_pb2.AgentTool(schema=audio_pb2.ToolSchema(name="lookup", description="Search the FAQ"),
                               knowledge_collection="default")
    async with make_stack(["when do you open"], llm=hearing_llm(reply=reply), knowledge_dir=tmp_path) as stack:
        async with AgentCall(stack.stub, session_config(mode=HYBRID, tools=[tool])) as call:
            await call.stream(tone(1.0), RATE)
            await call.silence(10, until=lambda: call.turn_over(1)(call.record))
            assert "opens at nine" in call.record.agent_text(1)
            assert all(r.messages[1].HasField("audio") for r in stack.llm.requests)
            lat = call.record.of("latency")[0]
            assert agent_pb2.TURN_STAGE_TOOLS in lat.critical_path


@pytest.mark.e2e
async def test_hybrid_against_an_llm_that_cannot_hear_fails_at_start_naming_the_model(make_stack) -> None:
    async with make_stack(["hello"]) as stack:
        async with AgentCall(stack.stub, session_config(mode=HYBRID)) as call:
            await call.done.wait()
        assert call.error is not None and call.error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'fake'" in call.error.details() and "AGENT_MODE_PIPELINE" in call.error.details()
        assert not stack.llm.configs  # refused before any stage stream opened


def test_the_ring_cuts_by_stt_offsets_and_stays_bounded() -> None:
    spec = pcm16_spec(16000)
    ring = UtteranceAudio(spec, keep_ms=1000)
    for i in range(150):  # 3 s in 20 ms messages, each filled with its own index
        ring.append(np.full(320, i, np.int16).tobytes())
    data, lost = ring.cut(2000, 2500, max_ms=10_000)
    got = np.frombuffer(data, np.int16)
    assert got[0] == (2000 - PRE_ROLL_MS) // 20 and got[-1] == math.ceil((2500 + TAIL_MS) / 20) - 1 and lost == 0
    # Older than the ring keeps (1 s + pre-roll + tail, in whole 20 ms messages): cut off, and said so.
    data, lost = ring.cut(0, 2900, max_ms=10_000)
    assert spec.duration_ms(len(data)) <= 1000 + PRE_ROLL_MS + TAIL_MS + 20 and lost > 1500
    # Over the model's limit: the newest max_ms are kept.
    data, lost = ring.cut(2000, 2900, max_ms=500)
    assert spec.duration_ms(len(data)) == pytest.approx(500, abs=1) and np.frombuffer(data, np.int16)[-1] == 149
    ring.restart()
    assert ring.cut(0, 100, max_ms=1000) == (b"", 0.0)  # nothing sent on the new STT stream yet


def test_a_clip_is_converted_only_when_the_model_needs_it() -> None:
    tel = AudioSpec(audio_pb2.AUDIO_ENCODING_MULAW, 8000)
    raw = encode(np.sin(np.arange(8000) / 5).astype(np.float32) * 0.5, tel)
    clip = clip_for_model(raw, tel, HEARS)
    assert clip.format.encoding == audio_pb2.AUDIO_ENCODING_PCM16 and clip.format.sample_rate_hz == 16000
    assert len(clip.data) == pytest.approx(2 * 16000, rel=0.01)
    same = clip_for_model(raw[:1600], pcm16_spec(16000), HEARS)
    assert same.data == raw[:1600]


def test_critical_path_per_mode() -> None:
    turn = Turn(1, "hi", 0.0, 0.3, 0.5)
    assert critical_path(turn, 300, 200, 0, False, 0.0) == [
        agent_pb2.TURN_STAGE_ENDPOINT, agent_pb2.TURN_STAGE_STT_FINALIZATION, agent_pb2.TURN_STAGE_LLM,
        agent_pb2.TURN_STAGE_TTS]
    # speculative, audio ready before the final released it: only the endpoint and STT were waited for
    assert critical_path(turn, 300, 200, 0, True, 0.4) == [agent_pb2.TURN_STAGE_ENDPOINT,
                                                           agent_pb2.TURN_STAGE_STT_FINALIZATION]
    turn.mode = HYBRID
    assert critical_path(turn, 300, 0, 50, False, 0.0) == [agent_pb2.TURN_STAGE_ENDPOINT, agent_pb2.TURN_STAGE_LLM,
                                                          agent_pb2.TURN_STAGE_TOOLS, agent_pb2.TURN_STAGE_TTS]
    typed = Turn(2, "hi", 1.0, 1.0, 1.0)
    assert critical_path(typed, 0, 0, 0, False, 0.0) == [agent_pb2.TURN_STAGE_LLM, agent_pb2.TURN_STAGE_TTS]
