"""Closing a session's playout always stops its sender task, even when audio arrives in the same instant.

Found through the gateway test of a phone socket dropped mid-answer, which failed on a busy machine: TTS
audio kept arriving while the orchestrator closed the session, and on Python 3.11 `asyncio.wait_for` drops
a cancel that lands in the loop step where its inner wait finishes. The sender then idled forever, so the
session (and its admission slot) never closed. Here the same instant is made deterministically.
"""

from __future__ import annotations

import asyncio

from voxgrid.orchestrator.playout import Chunk, Playout

from voxgrid.v1 import agent_pb2, audio_pb2


def chunk(turn_id: int, ms: float) -> Chunk:
    return Chunk(turn_id=turn_id, data=b"\0" * int(16 * ms), duration_ms=ms, mark=audio_pb2.SpeechMark(),
                 chunk_offset_ms=0, base_chars=0)


async def test_close_stops_the_sender_when_audio_wakes_it_in_the_same_loop_step() -> None:
    sent: list[agent_pb2.ConverseResponse] = []
    playout = Playout(sent.append, lead_ms=0, on_first_audio=lambda _: None, on_sent_all=lambda _: None)
    playout.start()
    playout.start_turn(1)
    playout.enqueue(chunk(1, 1000))
    playout.enqueue(chunk(1, 1000))  # due a second after the first: the sender waits for it
    for _ in range(100):
        if sent:
            break
        await asyncio.sleep(0.01)
    assert len(sent) == 1
    playout.enqueue(chunk(1, 1000))  # wakes the waiting sender ...
    closing = asyncio.ensure_future(playout.close())  # ... and the session closes before it runs
    done, _ = await asyncio.wait({closing}, timeout=5)
    assert closing in done, "the sender task swallowed the cancel and close() never returned"
    assert playout._task is not None and playout._task.cancelled()
