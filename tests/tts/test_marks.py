"""Mark bookkeeping: spoken_chars follows the audio actually sent."""

from __future__ import annotations

from voxgrid.services.tts.chunker import TextSpan
from voxgrid.services.tts.marks import MarkLedger


def test_spoken_chars_counts_whole_spans_and_a_partial_one_to_a_word_boundary() -> None:
    ledger = MarkLedger()
    a = ledger.add(TextSpan(0, 12, "Hello there,"))
    b = ledger.add(TextSpan(13, 40, "how are you doing today my"))
    assert ledger.spoken_chars() == 0
    ledger.produced(a, 800)
    ledger.finished(a)
    mark = ledger.sent(a, 800, 0)
    assert (mark.text_start, mark.text_end, mark.audio_offset_ms, mark.audio_duration_ms) == (0, 12, 0, 800)
    assert ledger.spoken_chars() == 12
    ledger.produced(b, 1000)
    ledger.finished(b)
    mark = ledger.sent(b, 500, 800)
    assert mark.audio_offset_ms == 800
    spoken = ledger.spoken_chars()
    assert 13 < spoken < 40
    assert "how are you doing today my"[: spoken - 13].endswith(("are", "you", "doing"))
    ledger.sent(b, 500, 1300)
    assert ledger.spoken_chars() == 40
