"""The real Moshi 7B architecture (random bf16 weights) slot-batched on a CUDA GPU."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("moshi", reason="duplex tests need the moshi venv (deploy/duplex-env.sh)")

from voxgrid.services.duplex.engines.moshi_engine import MoshiBatchModel
from voxgrid.services.duplex.slot_scheduler import SlotScheduler

from tests.duplex.conftest import caller_audio, run_whole, tokens

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


async def test_7b_sessions_in_one_batch_match_their_solo_runs() -> None:
    sched = SlotScheduler(MoshiBatchModel("random-7b", batch_size=4, device="cuda"))
    await sched.start()
    try:
        audios = [caller_audio(seed, 12) for seed in range(3)]
        solo = [await run_whole(sched, a) for a in audios]
        together = await asyncio.gather(*(run_whole(sched, a) for a in audios))
        assert [tokens(t) for t in together] == [tokens(s) for s in solo]
        assert all(f.step_ms > 0 for f in together[0])
    finally:
        await sched.stop()
