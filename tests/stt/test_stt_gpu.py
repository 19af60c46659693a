"""The engine on a GPU (float16, batched); skipped where CUDA is absent."""

from __future__ import annotations

import pytest
from voxgrid.services.stt.engines.base import DecodeRequest
from voxgrid.services.stt.engines.faster_whisper import FasterWhisperEngine

from tests.stt.conftest import at_16k

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_float16_batch_on_cuda(booking_speech) -> None:
    samples, rate, _ = booking_speech
    engine = FasterWhisperEngine(device="cuda", compute_type="float16")
    engine.load()
    audio = at_16k(samples, rate)
    hyps = engine.decode([DecodeRequest(audio, final=True)] * 16 + [DecodeRequest(audio)] * 16)
    assert len(hyps) == 32 and all("table" in h.text.lower() for h in hyps)
    assert hyps[0].words and not hyps[-1].words
