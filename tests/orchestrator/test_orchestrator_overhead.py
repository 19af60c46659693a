"""What the orchestrator adds is measured where it happens, and the latency record adds up.

`orchestration_overhead_ms` is a remainder (voice-to-voice minus the stages as the orchestrator sees
them), so it cannot show queueing inside the orchestrator; the hop histograms (backend message in ->
client message out) and the event-loop lag can, and they must be fed by a real turn.
"""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from voxgrid.orchestrator.client import AgentCall, session_config

from tests.orchestrator.conftest import RATE, tone

pytestmark = pytest.mark.e2e


def count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"voxgrid_orchestrator_{name}_count", labels) or 0.0


async def test_a_spoken_turn_feeds_the_hop_histograms_and_its_record_adds_up(make_stack) -> None:
    hops = ("stt->user_transcript", "llm->agent_text", "tts->agent_audio")
    before = {h: count("hop_seconds", hop=h) for h in hops}
    lag_before = count("event_loop_lag_seconds")
    async with make_stack(["what time is it"]) as stack:
        async with AgentCall(stack.stub, session_config()) as call:
            await call.stream(tone(1.0), RATE)
            await call.silence(20, until=lambda: call.turn_over(1)(call.record))
            (lat,) = call.record.of("latency")
    stages = (lat.endpoint_wait_ms, lat.stt_finalization_ms, lat.llm_time_to_first_token_ms,
              lat.tts_time_to_first_audio_ms, lat.tool_ms)
    assert lat.voice_to_voice_ms == pytest.approx(sum(stages) + lat.orchestration_overhead_ms, abs=0.01)
    assert all(s >= 0 for s in stages) and lat.endpoint_wait_ms > 0 and lat.voice_to_voice_ms > sum(stages) - 0.01
    for h in hops:  # each hop of the turn was timed at least once
        assert count("hop_seconds", hop=h) > before[h], h
    assert count("event_loop_lag_seconds") > lag_before  # the replica samples its loop while it runs
