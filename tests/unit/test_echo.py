"""The echo guard's parts without a session: the canceller on real speech, the self-echo match, the config."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
from voxgrid.orchestrator.turn_taking import echo_match

from voxgrid.audio import pcm16_spec
from voxgrid.audio_edge import CallerEdge, check_edge_config, echo_canceller, echo_tail_ms
from voxgrid.echo import EchoCanceller, frame_cost_histogram
from voxgrid.speech import FliteMissing, synthesize
from voxgrid.v1 import agent_pb2

RATE = 16000


def flite(text: str, voice: str, tmp_path) -> np.ndarray:  # type: ignore[no-untyped-def]
    try:
        x, rate = synthesize(text, tmp_path / f"{voice}.wav", voice=voice)
    except FliteMissing:
        pytest.skip("flite is not installed (make setup installs it with apt-get)")
    return soxr.resample(x, rate, RATE).astype(np.float32)


def db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-12))


def test_the_canceller_removes_a_late_quiet_echo_and_keeps_the_caller(tmp_path) -> None:
    agent = flite("Our shop opens at eight in the morning on weekdays and closes at six in the evening. On "
                  "Saturdays we open at nine and close early, at one in the afternoon.", "slt", tmp_path)
    caller = flite("Can I pay by card?", "rms", tmp_path)
    delay = int(0.1 * RATE)  # 100 ms from loudspeaker to microphone, -6 dB
    total = len(agent) + delay + len(caller) + RATE
    near = np.zeros(total, np.float32)
    near[delay:delay + len(agent)] += 0.5 * agent
    talk_at = len(agent) + delay + RATE // 2
    near[talk_at:talk_at + len(caller)] += caller
    spec = pcm16_spec(RATE)
    echo = EchoCanceller(RATE, spec, tail_ms=300)
    frame, chunk = RATE // 50, RATE // 10
    out, sent = [], 0
    for i in range(0, total, frame):  # a 20 ms microphone frame arrives every 20 ms
        now = i / RATE
        while sent < len(agent) and sent <= i + 2 * chunk:  # the agent's audio goes out ~200 ms ahead
            data = (agent[sent:sent + chunk] * 32767).astype("<i2").tobytes()
            echo.far(data, turn_id=1, now=now)
            sent += chunk
        out.append(echo.process(near[i:i + frame], now=now + frame / RATE))
        if i == 2 * RATE:  # echo alone: the caller's loudness follows the agent's, before the filter has learnt
            likeness = echo.echo_likeness(1.5)
    y = np.concatenate([*out, echo.flush()])[:total]
    converged = slice(3 * RATE, len(agent))
    removed = db(near[converged]) - db(y[converged])
    assert removed > 15, f"only {removed:.1f} dB of echo removed"
    corr = max(float(np.corrcoef(caller, kept_lag)[0, 1]) for kept_lag in
               (y[talk_at + lag:talk_at + lag + len(caller)] for lag in range(0, 320, 8)))
    assert corr > 0.8, f"the caller's own voice came through distorted (correlation {corr:.2f})"
    assert likeness > 0.9, f"echo alone only {likeness:.2f} like the agent's audio"
    seconds, attenuation = echo.take_stats()
    assert seconds > 4 and attenuation is not None and attenuation > 8
    assert echo.frames_processed >= total // (RATE // 100)


def test_an_interruption_drops_the_unplayed_reference(tmp_path) -> None:
    echo = EchoCanceller(RATE, pcm16_spec(RATE))
    echo.process(np.zeros(RATE // 50, np.float32), now=0.02)
    echo.far((np.ones(RATE) * 8000).astype("<i2").tobytes(), turn_id=1, now=0.02)  # a second, sent ahead
    assert len(echo._ref) > RATE * 0.9
    echo.cut(now=0.1)  # the client flushes its buffer: nothing more of it will echo
    assert len(echo._ref) < RATE * 0.2


def test_cost_per_frame_lands_in_the_edge_metrics() -> None:
    def count() -> float:
        return sum(s.value for m in frame_cost_histogram().collect() for s in m.samples if s.name.endswith("_count"))

    before = count()
    echo = EchoCanceller(8000, pcm16_spec(8000))
    echo.process(np.zeros(800, np.float32))
    assert count() - before == 10  # ten 10 ms frames at 8 kHz


def test_the_self_echo_match() -> None:
    said = "We open at eight in the morning on weekdays and close at six in the evening"
    assert echo_match("we open at eight in the morning", said) == 1.0
    assert echo_match("In one week, did.", said) >= 0.5  # STT's mishearing of an echo's residue
    assert echo_match("Stop please. What time do you open tomorrow?", said) < 0.3  # a caller's own words
    assert echo_match("", said) == 0.0 and echo_match("hello", "") == 0.0


def test_edge_config_turns_the_canceller_on_and_names_bad_values() -> None:
    spec = pcm16_spec(RATE)
    assert echo_tail_ms(agent_pb2.EdgeAudioConfig()) is None
    on = agent_pb2.EdgeAudioConfig(echo_cancellation=True)
    assert echo_tail_ms(on) == 300
    check_edge_config(on)
    edge = CallerEdge(spec, None, echo_canceller(on, spec, spec))
    assert edge.echo is not None and not edge.passthrough
    assert CallerEdge(spec).passthrough and CallerEdge(spec).echo is None
    with pytest.raises(ValueError, match=r"edge_audio\.echo_tail_ms 5000"):
        check_edge_config(agent_pb2.EdgeAudioConfig(echo_cancellation=True, echo_tail_ms=5000))
