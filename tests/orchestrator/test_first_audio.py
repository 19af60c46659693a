"""First audio by time: a slow LLM does not hold the first audio hostage, and nothing else changes.

The fake TTS speaks only at clause punctuation or a flush, so without the time rule a reply with no
comma is heard only once the LLM has written all of it; with the rule its first whole words go out
as an utterance of their own. The caller must still get every word once, in order, with marks that
index the turn's text, and a barge-in must still leave exactly what was heard in the history.
"""

from __future__ import annotations

import pytest
from voxgrid.orchestrator.client import TE, AgentCall, session_config

from tests.orchestrator.fakes import FakeLlm
from voxgrid.v1 import agent_pb2, llm_pb2

pytestmark = pytest.mark.e2e

REPLY = "Paris is the capital of France and a lovely city to visit in the spring."


def slow_llm(token_delay_s: float = 0.1) -> FakeLlm:
    return FakeLlm(reply=lambda messages, tools: REPLY, token_delay_s=token_delay_s)


def spoken_marks(call: AgentCall, turn_id: int) -> list[agent_pb2.AgentAudio]:
    """One AgentAudio per distinct mark (a mark rides on every chunk of its span), in arrival order."""
    seen, marks = set(), []
    for a in call.record.of("agent_audio"):
        key = (a.mark.text_start, a.mark.text_end)
        if a.turn_id == turn_id and a.mark.text and key not in seen:
            seen.add(key)
            marks.append(a.mark)
    return marks


# (first_audio_after_ms, tts_first_chunk_chars): by characters only (the fake TTS has no character rule:
# one piece); by time only (200 characters never fire); the character rule applied by the orchestrator
# (the time never fires: the phrase is cut before the word that would pass 16 characters).
@pytest.mark.parametrize(("after_ms", "chars"), [(0, 200), (100, 200), (60_000, 16)])
async def test_first_phrase_by_time_keeps_every_word_in_order_with_exact_marks(make_stack, after_ms, chars) -> None:
    async with make_stack([], llm=slow_llm(), first_audio_after_ms=after_ms, first_audio_min_words=3,
                          tts_first_chunk_chars=chars) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            call.send(agent_pb2.ConverseRequest(text="what is the capital of france"))
            await call.wait_for(call.turn_over(1), timeout_s=30)
            marks = spoken_marks(call, 1)
            text = call.record.agent_text(1)
            assert text == REPLY
            for m in marks:  # marks index the turn's text, across the turn's TTS utterances
                assert text[m.text_start:m.text_end] == m.text
            assert " ".join(m.text for m in marks).split() == REPLY.split()  # all words, once, in order
            if after_ms:
                # The first phrase went out before the LLM had finished, on a word boundary, >= 3 words.
                assert len(marks) >= 2
                first = marks[0]
                end = first.text_start + len(first.text.rstrip())
                assert len(first.text.split()) >= 3 and text[end] == " "
                if chars == 16:
                    assert first.text.strip() == "Paris is the"
            else:
                assert len(marks) == 1  # the fake TTS waits for the full stop: the control case
            # The sum rule: the record's parts add up to voice-to-voice.
            (lat,) = call.record.of("latency")
            parts = (lat.endpoint_wait_ms + lat.stt_finalization_ms + lat.llm_time_to_first_token_ms
                     + lat.tts_time_to_first_audio_ms + lat.tool_ms + lat.orchestration_overhead_ms)
            assert lat.voice_to_voice_ms == pytest.approx(parts, abs=0.01)
            assert min(lat.llm_time_to_first_token_ms, lat.tts_time_to_first_audio_ms,
                       lat.orchestration_overhead_ms) >= 0


async def test_barge_in_after_a_first_phrase_by_time_trims_history_to_what_was_heard(make_stack) -> None:
    async with make_stack([], llm=slow_llm(0.08), first_audio_after_ms=100) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            call.send(agent_pb2.ConverseRequest(text="what is the capital of france"))
            await call.wait_for(lambda r: bool(r.events(TE.KIND_AGENT_STARTED_SPEAKING)), timeout_s=30)
            await call.silence(1.0)  # the caller hears about a second of it, then cuts in
            call.interrupt()
            await call.wait_for(lambda r: bool(r.events(TE.KIND_INTERRUPTED)), timeout_s=10)
            heard = call.record.events(TE.KIND_INTERRUPTED)[0].heard_text
            assert heard and REPLY.startswith(heard) and len(heard) < len(REPLY)
            assert REPLY[len(heard)] == " "  # whole words only
            call.send(agent_pb2.ConverseRequest(text="thanks"))
            await call.wait_for(lambda r: len(stack.llm.requests) >= 2, timeout_s=10)
            assistant = [m.content for m in stack.llm.requests[-1].messages if m.role == llm_pb2.ROLE_ASSISTANT]
            assert assistant == [heard + " —"]
