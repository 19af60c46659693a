"""Endpointing, local agreement and streaming VAD: the pure parts of the streaming logic."""

from __future__ import annotations

import numpy as np
from voxgrid.services.stt.agreement import LocalAgreement
from voxgrid.services.stt.endpointing import Endpointer, EndpointingOptions, EndReason, Kind
from voxgrid.services.stt.vad import WINDOW, SileroVad

from tests.stt.conftest import at_16k, with_silence

# 32 ms windows: 5 windows = 160 ms, 10 windows = 320 ms
OPTS = EndpointingOptions(min_silence_ms=300, min_speech_ms=150, speculative_final_ms=100)


def run(probs: list[float], opts: EndpointingOptions = OPTS) -> list[tuple[Kind, int]]:
    ep = Endpointer(opts)
    return [(e.kind, e.sample // WINDOW) for e in ep.push(probs)]


def test_speech_start_needs_min_speech_and_points_at_onset() -> None:
    events = run([0.0] * 3 + [0.9] * 5)
    assert events == [(Kind.STARTED, 3)]


def test_short_burst_is_ignored() -> None:
    assert run([0.0] * 3 + [0.9] * 2 + [0.0] * 20) == []


def test_silence_then_end_with_speculation_first() -> None:
    events = run([0.9] * 10 + [0.0] * 12)
    assert events == [(Kind.STARTED, 0), (Kind.SILENCE, 10), (Kind.ENDED, 10)]


def test_resumed_speech_cancels_the_speculation_and_keeps_the_utterance() -> None:
    events = run([0.9] * 10 + [0.0] * 5 + [0.9] * 5 + [0.0] * 10)
    assert events == [(Kind.STARTED, 0), (Kind.SILENCE, 10), (Kind.RESUMED, 15), (Kind.SILENCE, 20),
                      (Kind.ENDED, 20)]


def test_hysteresis_band_does_not_count_as_silence() -> None:
    assert run([0.9] * 10 + [0.4] * 20) == [(Kind.STARTED, 0)]


def test_local_agreement_commits_only_what_two_decodes_agree_on() -> None:
    la = LocalAgreement()
    p1 = la.update("I would like")
    assert p1.committed_text == "" and p1.stability == 0
    p2 = la.update("I would like to book")
    assert p2.committed_text == "I would like" and p2.text == "I would like to book"
    # The model changes its mind about a committed word: the committed prefix wins.
    p3 = la.update("I wood like to book a table")
    assert p3.committed_text == "I would like to book" and p3.text.startswith("I would like to book")
    assert 0 < p3.stability < 1
    assert la.final_text("I would like to book a table for two") == "I would like to book a table for two"


def test_silero_stream_finds_speech_and_is_chunking_invariant(hello_speech) -> None:
    samples, rate = hello_speech
    audio = with_silence(at_16k(samples, rate), 16000, before_s=1.0, after_s=1.0)
    vad = SileroVad.shared()
    whole = vad.stream().process(audio)
    s = vad.stream()
    chunked = np.concatenate([s.process(audio[i : i + 320]) for i in range(0, len(audio), 320)])
    assert np.allclose(whole, chunked, atol=1e-5)
    lead = 16000 // WINDOW  # the first second is silence
    assert whole[: lead - 2].max() < 0.3
    assert (whole[lead: lead + len(samples) * 16000 // rate // WINDOW] > 0.5).mean() > 0.5


# Semantic end of turn: 200 ms short wait = 7 windows, 1000 ms cap = 32 windows.
SEMANTIC = EndpointingOptions(min_speech_ms=150, speculative_final_ms=100, mode="semantic", turn_min_wait_ms=200,
                              turn_max_wait_ms=1000, turn_threshold=0.5)


def test_semantic_complete_verdict_ends_after_the_short_wait() -> None:
    ep = Endpointer(SEMANTIC)
    events = ep.push([0.9] * 10 + [0.0] * 4)  # 128 ms of silence: SILENCE asks the model
    assert [e.kind for e in events] == [Kind.STARTED, Kind.SILENCE]
    assert ep.set_verdict(0.9, ep.pause) == []  # 128 ms < 200 ms: not yet
    ended = ep.push([0.0] * 3)
    assert [(e.kind, e.sample // WINDOW, e.reason) for e in ended] == [(Kind.ENDED, 10, EndReason.COMPLETE)]
    assert ended[0].probability == 0.9


def test_semantic_verdict_arriving_late_ends_at_once() -> None:
    ep = Endpointer(SEMANTIC)
    ep.push([0.9] * 10 + [0.0] * 9)  # 288 ms of silence, verdict still out
    ended = ep.set_verdict(0.7, ep.pause)
    assert [(e.kind, e.reason) for e in ended] == [(Kind.ENDED, EndReason.COMPLETE)]


def test_semantic_unfinished_turn_waits_for_the_cap() -> None:
    ep = Endpointer(SEMANTIC)
    ep.push([0.9] * 10 + [0.0] * 4)
    ep.set_verdict(0.1, ep.pause)
    assert ep.push([0.0] * 27) == []  # 992 ms: still waiting
    ended = ep.push([0.0])
    assert [(e.kind, e.reason, e.probability) for e in ended] == [(Kind.ENDED, EndReason.MAX_WAIT, 0.1)]


def test_semantic_verdict_of_an_earlier_pause_is_ignored() -> None:
    ep = Endpointer(SEMANTIC)
    ep.push([0.9] * 10 + [0.0] * 4)
    first = ep.pause
    ep.push([0.9] * 5 + [0.0] * 4)  # speech resumed, a second pause began
    assert ep.set_verdict(0.99, first) == []
    assert ep.push([0.0] * 10) == []  # no verdict for this pause: not ended at the short wait


def test_fixed_silence_reports_its_reason() -> None:
    ended = [e for e in Endpointer(OPTS).push([0.9] * 10 + [0.0] * 12) if e.kind is Kind.ENDED]
    assert ended[0].reason is EndReason.SILENCE and ended[0].probability is None
