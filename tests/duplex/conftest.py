"""Duplex fixtures: the small random-weight Moshi (CPU), a slot scheduler around it, session helpers.

These tests need the duplex environment (moshi pins its own torch): build it with
`deploy/duplex-env.sh .venv-duplex` and run `PYTHONPATH=. .venv-duplex/bin/python -m pytest tests/duplex`.
Each test module starts with pytest.importorskip("moshi"), so elsewhere they skip.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from voxgrid.services.duplex.engines.moshi_engine import MoshiBatchModel
from voxgrid.services.duplex.engines.slot_sampling import SlotSampling
from voxgrid.services.duplex.slot_scheduler import DuplexFrame, SlotScheduler, SlotSession

# moshi reads NO_TORCH_COMPILE when its modules are imported (each test module's importorskip does), so it
# is decided here: off where this venv's torch has no CUDA (compiling for CPU costs minutes), on where it
# has, because the GPU tests exercise moshi's compiled paths and CUDA graphs.
if not torch.cuda.is_available():
    os.environ.setdefault("NO_TORCH_COMPILE", "1")

FRAME = 1920
RATE = 24000
GREEDY = SlotSampling(text_temperature=0.0, audio_temperature=0.0, seed=0)


def caller_audio(seed: int, n_frames: int) -> np.ndarray:
    """Distinct, speech-like-enough caller audio per seed: tones with a noisy envelope at 24 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames * FRAME) / RATE
    f0 = 120 + 40 * seed
    x = 0.3 * np.sin(2 * np.pi * f0 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * (1 + seed) * t))
    return (x + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


async def start_scheduler(slots: int, **kw: object) -> SlotScheduler:
    sched = SlotScheduler(MoshiBatchModel("random-small", batch_size=slots), **kw)  # type: ignore[arg-type]
    await sched.start()
    return sched


@pytest.fixture(scope="module")
def scheduler4() -> Iterator[SlotScheduler]:
    """Shared by tests that each use fresh sessions (the scheduler serves any event loop)."""
    sched = asyncio.run(start_scheduler(4))
    yield sched
    asyncio.run(sched.stop())


async def collect(session: SlotSession, limit: int | None = None) -> list[DuplexFrame]:
    """Frames of a session until it ends (or `limit` frames)."""
    out: list[DuplexFrame] = []
    async for frame in session.frames():
        out.append(frame)
        if limit is not None and len(out) >= limit:
            break
    return out


async def run_whole(sched: SlotScheduler, audio: np.ndarray, sampling: SlotSampling = GREEDY) -> list[DuplexFrame]:
    """One session that sends all its audio at once, ends, and reads every frame."""
    session = sched.open_session(sampling)
    try:
        session.push_audio(audio)
        session.end()
        return await collect(session)
    finally:
        session.close()


def tokens(frames: list[DuplexFrame]) -> list[int]:
    return [f.text_token for f in frames]
