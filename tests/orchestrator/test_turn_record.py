"""The turn record says how STT decided the caller's turn had ended (semantic end of turn)."""

from __future__ import annotations

import pytest
from voxgrid.orchestrator.turns import Turn, latency

from voxgrid.v1 import stt_pb2


def turn(endpoint: stt_pb2.Transcript | None) -> Turn:
    t = Turn(1, "I need to change my flight", speech_end_at=10.0, endpoint_at=10.2, final_at=10.25,
             generate_sent_at=10.25, first_token_at=10.35, first_tts_text_at=10.35, first_audio_at=10.6)
    t.endpoint = endpoint
    return t


def test_semantic_decision_and_probability_reach_the_turn_record() -> None:
    final = stt_pb2.Transcript(is_final=True, text="I need to change my flight",
                               endpoint_mode=stt_pb2.ENDPOINT_MODE_SEMANTIC,
                               end_of_turn_reason=stt_pb2.END_OF_TURN_REASON_COMPLETE, end_of_turn_probability=0.83)
    record = latency(turn(final), first_ready_at=0.0)
    assert record.endpoint_mode == stt_pb2.ENDPOINT_MODE_SEMANTIC
    assert record.end_of_turn_reason == stt_pb2.END_OF_TURN_REASON_COMPLETE
    assert record.end_of_turn_probability == pytest.approx(0.83)
    assert record.endpoint_wait_ms == pytest.approx(200)


def test_fixed_silence_and_typed_turns_carry_no_probability() -> None:
    fixed = stt_pb2.Transcript(is_final=True, endpoint_mode=stt_pb2.ENDPOINT_MODE_FIXED_SILENCE,
                               end_of_turn_reason=stt_pb2.END_OF_TURN_REASON_SILENCE)
    record = latency(turn(fixed), first_ready_at=0.0)
    assert record.endpoint_mode == stt_pb2.ENDPOINT_MODE_FIXED_SILENCE
    assert not record.HasField("end_of_turn_probability")
    typed = latency(turn(None), first_ready_at=0.0)
    assert typed.endpoint_mode == stt_pb2.ENDPOINT_MODE_UNSPECIFIED and not typed.HasField("end_of_turn_probability")
