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
    # The delay estimate inline: a replay runs far faster than real time, a worker thread's answer would come late.
    echo = EchoCanceller(RATE, spec, tail_ms=300, threaded=False)
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
    converged = slice(4 * RATE, len(agent))  # delay tracking holds the filter until the delay is measured (~0.9 s)
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
    assert edge.echo.aligner is not None  # delay tracking: on unless asked off
    off = agent_pb2.EdgeAudioConfig(echo_cancellation=True, echo_delay_tracking=False)
    assert echo_canceller(off, spec, spec).aligner is None
    assert CallerEdge(spec).passthrough and CallerEdge(spec).echo is None
    with pytest.raises(ValueError, match=r"edge_audio\.echo_tail_ms 5000"):
        check_edge_config(agent_pb2.EdgeAudioConfig(echo_cancellation=True, echo_tail_ms=5000))


def replay_turns(agent_turns: list[np.ndarray], delays_ms: list[float], echo: EchoCanceller,
                 caller: np.ndarray | None = None,
                 caller_at_s: float = 0.3) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A speakerphone call offline: agent turns 1.5 s apart, each echoed at -6 dB `delays_ms[k]` late (the
    path changes every turn), the agent's audio sent 200 ms ahead of playback as the playout does; with
    `caller`, a second voice also talks `caller_at_s` into the last turn. Returns (microphone, canceller output,
    where each turn's echo starts)."""
    starts, t = [], RATE
    for a in agent_turns:
        starts.append(t)
        t += len(a) + int(1.5 * RATE)
    near = np.zeros(t + RATE, np.float32)
    echo_at = []
    for start, a, d in zip(starts, agent_turns, delays_ms, strict=True):
        echo_at.append(start + int(d * RATE / 1000))
        near[echo_at[-1]:echo_at[-1] + len(a)] += 0.5 * a
    if caller is not None:
        at = starts[-1] + int(caller_at_s * RATE)
        near[at:at + len(caller)] += caller[:len(near) - at]
    frame, chunk, ahead = RATE // 50, RATE // 10, RATE // 5
    sent = [0] * len(agent_turns)
    out = []
    for i in range(0, len(near), frame):
        for k, (start, a) in enumerate(zip(starts, agent_turns, strict=True)):
            while sent[k] < len(a) and start + sent[k] <= i + ahead:
                data = (a[sent[k]:sent[k] + chunk] * 32767).astype("<i2").tobytes()
                echo.far(data, turn_id=k + 1, now=max(i, start) / RATE)
                sent[k] += chunk
        out.append(echo.process(near[i:i + frame], now=(i + frame) / RATE))
    return near, np.concatenate([*out, echo.flush()])[:len(near)], echo_at


AGENT_LINES = ["We open at eight in the morning on weekdays and close at six in the evening.",
               "Go to the sign in page and choose forgot password.",
               "The premium plan includes unlimited storage and priority support on the phone."]


def test_a_changed_echo_path_does_not_leak_at_the_start_of_a_turn(tmp_path) -> None:
    lines = [flite(text, "slt", tmp_path) for text in AGENT_LINES]
    turns, delays = [*lines, *lines], [40.0, 120.0, 60.0, 100.0, 80.0, 40.0]
    first_s = {}
    for tracking in (True, False):
        echo = EchoCanceller(RATE, pcm16_spec(RATE), tail_ms=300, align=tracking, threaded=False)
        near, y, echo_at = replay_turns(turns, delays, echo)
        # The first second of every turn after the first (the filter has learnt a path, then it moved).
        first_s[tracking] = [db(near[at:at + RATE]) - db(y[at:at + RATE]) for at in echo_at[1:]]
    assert min(first_s[True]) > 15, first_s  # measured 18-28 dB (more as the filter learns over turns)
    assert max(first_s[False]) < 8, first_s  # without tracking the filter re-learns: 2-5 dB
    assert echo.take_alignment() == (None, 0.0)  # tracking off: nothing measured, nothing gated


def test_delay_tracking_reports_the_measured_delay_and_passes_a_caller_talking_over_the_echo(tmp_path) -> None:
    lines = [flite(text, "slt", tmp_path) for text in AGENT_LINES[:2]]
    caller = flite("Stop please. What time do you open tomorrow?", "rms", tmp_path)
    echo = EchoCanceller(RATE, pcm16_spec(RATE), tail_ms=300, threaded=False)
    _, y, echo_at = replay_turns(lines, [40.0, 120.0], echo, caller=caller, caller_at_s=0.2)
    delay_ms, gated_s = echo.take_alignment()
    # 120 ms acoustic + up to the 200 ms the audio was placed ahead of its playback, minus what marks corrected
    assert delay_ms is not None and 120 <= delay_ms <= 300, delay_ms
    assert gated_s > 0.2  # echo alone at the start of each turn was held
    at = echo_at[-1] - int(0.12 * RATE) + int(0.2 * RATE)  # where the caller's voice starts
    kept = y[at:at + len(caller)]
    corr = max(float(np.corrcoef(caller[:len(kept) - 320], kept[lag:lag + len(kept) - 320])[0, 1])
               for lag in range(0, 320, 8))
    assert corr > 0.7, f"the caller talking over the echo at the start of a turn was muted or mangled ({corr:.2f})"
    assert echo.take_alignment() == (None, 0.0)  # reported once, into one turn record


def test_the_delay_estimate_is_exact_on_speech(tmp_path) -> None:
    from voxgrid.echo_align import estimate_delay

    x = flite(AGENT_LINES[0], "slt", tmp_path)[RATE // 2:RATE // 2 + RATE]
    rng = np.random.default_rng(0)
    for lag in (0, 17, 1600, 3999):
        near = np.concatenate([np.zeros(lag, np.float32), 0.5 * x])[:int(0.2 * RATE) + 4800]
        near = near + 0.003 * rng.standard_normal(len(near)).astype(np.float32)
        found, corr, erl = estimate_delay(near, x[:int(0.2 * RATE)], 4800)
        assert found == lag and corr > 0.9 and 0.2 < erl < 0.3, (lag, found, corr, erl)


def test_an_echo_path_that_moves_within_a_turn_is_measured_again(tmp_path) -> None:
    agent = np.concatenate([flite(text, "slt", tmp_path) for text in AGENT_LINES])  # ~12 s, one turn
    jump = 4 * RATE  # the echo comes 40 ms late, then 110 ms (a player that re-buffered, a rerouted call)
    near = np.zeros(len(agent) + RATE, np.float32)
    near[640:jump] += 0.5 * agent[:jump - 640]
    rest = agent[jump - 1760:]
    near[jump:jump + len(rest)] += 0.5 * rest
    echo = EchoCanceller(RATE, pcm16_spec(RATE), tail_ms=300, threaded=False)
    frame, chunk, sent, out, delays = RATE // 50, RATE // 10, 0, [], []
    for i in range(0, len(near), frame):
        while sent < len(agent) and sent <= i + RATE // 5:
            echo.far((agent[sent:sent + chunk] * 32767).astype("<i2").tobytes(), turn_id=1, now=i / RATE)
            sent += chunk
        out.append(echo.process(near[i:i + frame], now=(i + frame) / RATE))
        delay, _ = echo.take_alignment()
        if delay is not None:
            delays.append(delay)
    y = np.concatenate(out)[:len(near)]
    assert len(delays) >= 2 and abs((delays[-1] - delays[0]) - 70) < 2, delays  # the move, to the sample
    after = slice(jump + int(1.5 * RATE), jump + 3 * RATE)
    assert db(near[after]) - db(y[after]) > 15, "the canceller did not follow the moved path"


def test_echo_alone_loses_most_of_its_energy_in_the_echo_stage_a_caller_over_it_does_not(tmp_path) -> None:
    # What the self-echo check leans on when STT's words say nothing (whisper's "Thank you." on the gated
    # near-silence at the start of an answer): how much of an utterance's audio the echo stage took away.
    agent = flite(AGENT_LINES[0] + " " + AGENT_LINES[2], "slt", tmp_path)
    caller = flite("Stop please. What time do you open tomorrow?", "rms", tmp_path)
    delay, talk_at = int(0.08 * RATE), 3 * RATE  # the first answer of the call: nothing learnt yet
    near = np.zeros(len(agent) + delay + RATE, np.float32)
    near[delay:delay + len(agent)] += 0.5 * agent
    near[talk_at:talk_at + len(caller)] += caller
    echo = EchoCanceller(RATE, pcm16_spec(RATE), tail_ms=300, threaded=False)
    frame, chunk, sent, removed = RATE // 50, RATE // 10, 0, {}
    for i in range(0, talk_at + len(caller), frame):
        while sent < len(agent) and sent <= i + 2 * chunk:
            echo.far((agent[sent:sent + chunk] * 32767).astype("<i2").tobytes(), turn_id=1, now=i / RATE)
            sent += chunk
        echo.process(near[i:i + frame], now=(i + frame) / RATE)
        if i + frame == talk_at:  # echo alone so far: from the answer's first word (gated) on
            removed["echo"] = echo.removed_db(2.5)
            removed["echo, first second"] = echo.removed_db(2.5, until_s=1.5)
    removed["caller"] = echo.removed_db(len(caller) / RATE)
    removed["caller, its last second left out"] = echo.removed_db(len(caller) / RATE, until_s=1.0)
    # measured 18 and 22 dB for echo alone, 4.7 and 3.9 dB with the caller (the check's line: ECHO_REMOVED_DB, 10)
    assert removed["echo"] > 13 and removed["echo, first second"] > 13, removed
    assert removed["caller"] < 7 and removed["caller, its last second left out"] < 7, removed
    assert echo.removed_db(0.0) == 0.0
