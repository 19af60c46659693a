"""Endpointing, local agreement and streaming VAD: the pure parts of the streaming logic."""

from __future__ import annotations

import numpy as np
from voxgrid.services.stt.agreement import LocalAgreement
from voxgrid.services.stt.endpointing import Endpointer, EndpointingOptions, Kind
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
