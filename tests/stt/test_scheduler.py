"""The decode scheduler with the real tiny.en engine: priority, batching, dropping a session's jobs."""

from __future__ import annotations

import numpy as np
import pytest
from voxgrid.services.stt.engines.base import DecodeRequest
from voxgrid.services.stt.scheduler import BatchStats, DecodeScheduler

from tests.stt.conftest import at_16k

pytestmark = pytest.mark.slow


def test_finals_first_batched_and_dropped_sessions_leave_nothing(stt_engine, hello_speech) -> None:
    samples, rate = hello_speech
    audio = at_16k(samples, rate)
    batches: list[BatchStats] = []
    depths: list[int] = []
    sched = DecodeScheduler(stt_engine, max_batch_size=4, on_queue_depth=depths.append, on_batch=batches.append)
    blocker = sched.submit("x", DecodeRequest(np.tile(audio, 4), final=True))  # queued before the worker runs
    partials = [sched.submit(f"p{i}", DecodeRequest(audio)) for i in range(3)]
    leaver = [sched.submit("leaver", DecodeRequest(audio)), sched.submit("leaver", DecodeRequest(audio, final=True))]
    finals = [sched.submit(f"f{i}", DecodeRequest(audio, final=True)) for i in range(2)]
    assert sched.queued() == 8 and max(depths) == 8
    assert sched.drop_session("leaver") == 2 and sched.queued("leaver") == 0
    assert all(j.future.cancelled() for j in leaver)
    sched.start()
    try:
        texts = [f.future.result(timeout=60).text for f in (blocker, *finals, *partials)]
    finally:
        sched.stop()
    assert all("table" in t.lower() for t in texts)
    # First batch: the three finals (blocker + 2); then the partials together.
    assert [(b.size, b.finals) for b in batches] == [(3, 3), (3, 0)]
    assert sched.queued() == 0 and depths[-1] == 0
    assert finals[0].future.result().words and not partials[0].future.result().words
