"""The documented noise-suppression default, checked on recorded telephone speech with the real tiny.en.

docs/edge-audio.md: suppression is off unless a profile turns it on; turned on without naming an engine it
runs speex, which helped on white noise. This checks that on a few prompts: speex (the default engine) does
not make WER worse than no suppression on white noise at 5 dB SNR. The numbers are logged.
"""

from __future__ import annotations

import logging

import pytest

from benchmarks.bench_edge_audio import babble_source, corpus_wer, load_prompts
from voxgrid.audio_edge import suppressor_for
from voxgrid.noise import DEFAULT_ENGINE
from voxgrid.v1 import agent_pb2

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)


def test_default_engine_does_not_make_wer_worse_on_white_noise(stt_engine, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO)
    assert suppressor_for(agent_pb2.EdgeAudioConfig()) is None  # off unless asked for
    assert suppressor_for(agent_pb2.EdgeAudioConfig(noise_suppression=True)) == ""  # = DEFAULT_ENGINE
    prompts = load_prompts(4, min_words=4)
    if len(prompts) < 4:
        pytest.skip("asterisk-core-sounds-en-wav is not installed")
    babble = babble_source()
    off, _, _ = corpus_wer(stt_engine, prompts, "white", 5.0, "none", babble)
    on, frames, busy = corpus_wer(stt_engine, prompts, "white", 5.0, DEFAULT_ENGINE, babble)
    log.info("white noise 5 dB, %d prompts: WER off %.1f %%, %s %.1f %% (%.3f ms per frame)",
             len(prompts), 100 * off, DEFAULT_ENGINE, 100 * on, 1000 * busy / max(frames, 1))
    print(f"white 5 dB WER: off {100 * off:.1f} %, {DEFAULT_ENGINE} {100 * on:.1f} %")
    assert frames > 0
    assert on <= off, f"{DEFAULT_ENGINE} made WER worse on white noise: {100 * on:.1f} % vs {100 * off:.1f} % off"
