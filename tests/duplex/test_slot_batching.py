"""Slot batching with the real (small, random-weight) Moshi on CPU: sessions never see each other."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("moshi", reason="duplex tests need the moshi venv (deploy/duplex-env.sh)")

from voxgrid.services.duplex.engines.slot_sampling import SlotSampling
from voxgrid.services.duplex.slot_scheduler import SessionFailure, SlotScheduler, SlotsExhausted

from tests.duplex.conftest import (
    GREEDY,
    caller_audio,
    collect,
    run_whole,
    start_scheduler,
    tokens,
)

N = 10  # frames per session (0.8 s): enough to leave the model's delay and diverge per input

pytestmark = pytest.mark.slow


async def test_sessions_in_one_batch_match_their_solo_runs(scheduler4: SlotScheduler) -> None:
    audios = [caller_audio(seed, N) for seed in range(3)]
    solo = [await run_whole(scheduler4, a) for a in audios]
    together = await asyncio.gather(*(run_whole(scheduler4, a) for a in audios))
    for alone, batched in zip(solo, together, strict=True):
        assert len(batched) == N
        assert all(f.frames_late == 0 for f in batched)
        assert tokens(batched) == tokens(alone)
        np.testing.assert_array_equal(np.concatenate([f.pcm for f in batched]),
                                      np.concatenate([f.pcm for f in alone]))
    # The sessions really are different conversations (otherwise the comparison above proves nothing).
    assert len({tuple(tokens(s)) for s in solo}) == 3
    assert all(t >= 0 for t in tokens(solo[0])[2:])


async def test_seeded_sampling_is_per_slot(scheduler4: SlotScheduler) -> None:
    audio = caller_audio(7, N)
    sampling = [SlotSampling(0.7, 0.8, seed=s) for s in (11, 12)]
    solo = [await run_whole(scheduler4, audio, s) for s in sampling]
    together = await asyncio.gather(*(run_whole(scheduler4, audio, s) for s in sampling))
    assert [tokens(t) for t in together] == [tokens(s) for s in solo]
    assert tokens(solo[0]) != tokens(solo[1])  # same audio, different seeds: different samples


async def test_joining_and_leaving_mid_stream_leaves_others_unchanged(scheduler4: SlotScheduler) -> None:
    long_audio = caller_audio(0, 2 * N)
    reference = await run_whole(scheduler4, long_audio)

    main = scheduler4.open_session(GREEDY)
    main.push_audio(long_audio)
    main.end()
    seen = []
    joiner = leaver = None
    async for frame in main.frames():
        seen.append(frame)
        if len(seen) == 3:  # one joins for a short conversation and ends normally
            joiner = asyncio.create_task(run_whole(scheduler4, caller_audio(1, 4)))
        if len(seen) == 6:  # another joins and disconnects abruptly after two frames
            leaver = scheduler4.open_session(GREEDY)
            leaver.push_audio(caller_audio(2, N))
            leaver_frames = await collect(leaver, limit=2)
            leaver.close()
    main.close()
    assert joiner is not None and leaver is not None
    assert len(await joiner) == 4 and len(leaver_frames) == 2
    assert tokens(seen) == tokens(reference)
    np.testing.assert_array_equal(np.concatenate([f.pcm for f in seen]),
                                  np.concatenate([f.pcm for f in reference]))


async def test_all_slots_taken_then_freed_slot_is_reusable_and_reset() -> None:
    sched = await start_scheduler(1)
    try:
        audio = caller_audio(3, N)
        fresh = await run_whole(sched, audio)

        first = sched.open_session(GREEDY)
        first.push_audio(caller_audio(4, N))
        assert len(await collect(first, limit=3)) == 3
        with pytest.raises(SlotsExhausted, match="slots"):
            sched.open_session(GREEDY)
        first.close()  # a disconnect: the slot is free at once
        assert sched.active_slots() == 0

        reused = await run_whole(sched, audio)  # the slot's old state must not leak into the new session
        assert tokens(reused) == tokens(fresh)
    finally:
        await sched.stop()


async def test_stalled_client_is_fed_silence_then_ended() -> None:
    sched = await start_scheduler(1, stall_timeout_s=0.6)
    try:
        session = sched.open_session(GREEDY)
        session.push_audio(caller_audio(5, 2))
        frames = []
        with pytest.raises(SessionFailure, match="no audio for") as err:
            async for frame in session.frames():
                frames.append(frame)
        assert err.value.kind == "stalled"
        assert len(frames) > 2 and frames[-1].frames_late == len(frames) - 2  # the batch kept stepping
        assert sched.active_slots() == 0
    finally:
        await sched.stop()


async def test_client_far_ahead_of_real_time_is_refused() -> None:
    sched = await start_scheduler(1, max_buffered_s=1.0)
    try:
        session = sched.open_session(GREEDY)
        with pytest.raises(SessionFailure, match="real-time pace"):
            session.push_audio(caller_audio(6, 20))
        session.close()
    finally:
        await sched.stop()
