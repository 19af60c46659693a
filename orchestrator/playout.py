"""Agent audio on its way to the caller, paced like playback, and what the caller has heard of it.

Sending audio as fast as TTS makes it would leave seconds of speech in the client's buffer, so a barge-in
could not stop it and nobody would know what was heard. Audio goes out at most `lead_ms` ahead of
real-time playback; what the caller heard is then known from the client's playback marks, or estimated
from the pacing, and mapped to characters of the agent's text through the TTS marks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from voxgrid.orchestrator import telemetry

from voxgrid.v1 import agent_pb2, audio_pb2


@dataclass
class Chunk:
    turn_id: int
    data: bytes
    duration_ms: float
    mark: audio_pb2.SpeechMark
    chunk_offset_ms: float  # offset of the chunk in its TTS utterance
    base_chars: int  # where the utterance's text starts in the turn's text; -1 for filler speech
    turn_offset_ms: float = 0.0  # offset of the chunk in the turn's audio (set when queued)
    arrived_at: float = 0.0  # when its TTS message arrived (telemetry: the tts->agent_audio hop)


def turn_mark(chunk: Chunk) -> audio_pb2.SpeechMark:
    """The chunk's TTS mark as the caller gets it: characters of the turn's text, not of its TTS utterance
    (a turn is spoken as several utterances: a first phrase by time, tool rounds)."""
    if chunk.base_chars <= 0 or not chunk.mark.text:
        return chunk.mark
    mark = audio_pb2.SpeechMark()
    mark.CopyFrom(chunk.mark)
    mark.text_start += chunk.base_chars
    mark.text_end += chunk.base_chars
    return mark


class Playout:
    """One per session: a paced sender task and the bookkeeping of what each turn has played."""

    def __init__(self, send: Callable[[agent_pb2.ConverseResponse], None], lead_ms: float,
                 on_first_audio: Callable[[int], None], on_sent_all: Callable[[int], None]) -> None:
        self._send = send
        self.lead_s = lead_ms / 1000
        self._on_first_audio = on_first_audio
        self._on_sent_all = on_sent_all
        self._queue: deque[Chunk] = deque()
        self._wake = asyncio.Event()
        self.turn_id = -1
        self.turn_started_at = 0.0  # when the turn's first chunk went out (playback starts then)
        self.turn_audio_ms = 0.0  # queued for the current turn
        self.sent_ms = 0.0
        self.sent: list[Chunk] = []
        self.client_played_ms: float | None = None
        self._complete = False  # no more audio will come for this turn
        self.held = False  # a speculative turn's audio waits for the endpoint; a paused turn's too
        self.paused_at = 0.0  # when a possible barge-in paused the sending
        self.first_ready_at = 0.0  # when the turn's first chunk was queued
        self.released_at = 0.0  # when held audio was last let go (the hop of a held first chunk starts there)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin sending (when the session starts running: a session that never runs leaves no task)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def start_turn(self, turn_id: int, held: bool = False) -> None:
        self.turn_id = turn_id
        self.held = held
        self.paused_at = 0.0
        self.first_ready_at = 0.0
        self.turn_started_at = 0.0
        self.turn_audio_ms = 0.0
        self.sent_ms = 0.0
        self.sent = []
        self.client_played_ms = None
        self._complete = False
        self._queue.clear()

    def enqueue(self, chunk: Chunk) -> None:
        if chunk.turn_id != self.turn_id:
            return  # audio of a turn that is over (cancelled): never played
        chunk.turn_offset_ms = self.turn_audio_ms
        self.turn_audio_ms += chunk.duration_ms
        if not self.first_ready_at:
            self.first_ready_at = time.monotonic()
        self._queue.append(chunk)
        self._wake.set()

    def complete(self) -> None:
        """No more audio for this turn: report when the last chunk has gone out."""
        self._complete = True
        self._wake.set()

    def pause(self) -> None:
        """The caller may be cutting in: stop sending now; `resume` if it was only a backchannel."""
        if not self.paused_at:
            self.paused_at = time.monotonic()
            self.held = True

    def resume(self) -> None:
        """Go on after a pause. Playback restarts where the client's buffer ran dry, if it did."""
        if not self.paused_at:
            return
        now = time.monotonic()
        if self.turn_started_at:
            buffered_s = self.sent_ms / 1000 - (self.paused_at - self.turn_started_at)
            gap = (now - self.paused_at) - max(0.0, buffered_s)
            if gap > 0:
                self.turn_started_at += gap
        self.paused_at = 0.0
        self.release()

    def release(self) -> None:
        """The endpoint confirmed a speculative turn: its audio may go out now."""
        self.held = False
        self.released_at = time.monotonic()
        self._wake.set()

    def clear(self) -> None:
        """Stop sending at once (barge-in)."""
        self.held = False
        self.paused_at = 0.0
        self._queue.clear()
        self._complete = False
        self.turn_id = -1

    def played_ms(self) -> float:
        """What the caller has heard of the current turn: their own mark if they send them, else pacing."""
        if self.client_played_ms is not None:
            return min(self.client_played_ms, self.sent_ms)
        if not self.turn_started_at:
            return 0.0
        return min(1000 * (time.monotonic() - self.turn_started_at), self.sent_ms)

    def remaining_playback_s(self) -> float:
        if not self.turn_started_at:
            return 0.0
        return max(0.0, self.turn_started_at + self.sent_ms / 1000 - time.monotonic())

    def heard_chars(self, played_ms: float) -> int:
        """Characters of the turn's text spoken within `played_ms` of its audio (word-accurate at best)."""
        heard = 0
        for c in self.sent:
            if c.base_chars < 0 or c.turn_offset_ms >= played_ms:
                continue
            m = c.mark
            start, end = c.base_chars + m.text_start, c.base_chars + m.text_end
            utterance_start = c.turn_offset_ms - c.chunk_offset_ms  # utterance start on the turn clock
            into_span = played_ms - utterance_start - m.audio_offset_ms
            if m.audio_duration_ms and into_span < m.audio_duration_ms:
                heard = max(heard, start + int((end - start) * max(0.0, into_span) / m.audio_duration_ms))
            elif not m.audio_duration_ms and c.turn_offset_ms + c.duration_ms > played_ms:
                heard = max(heard, start)
            else:
                heard = max(heard, end)
        return heard

    async def _run(self) -> None:
        while True:
            if self.held:
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._queue:
                if self._complete and self.turn_id >= 0:
                    self._complete = False
                    self._on_sent_all(self.turn_id)
                self._wake.clear()
                await self._wake.wait()
                continue
            chunk = self._queue[0]
            if self.turn_started_at:
                due = self.turn_started_at + chunk.turn_offset_ms / 1000 - self.lead_s
                delay = due - time.monotonic()
                if delay > 0:
                    self._wake.clear()
                    # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that lands in the same loop
                    # step as the wake-up (new audio while the session closes), and this task then idles
                    # forever, holding the session, its admission slot and `close()` with it.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                    continue  # re-check: the queue may have been cleared meanwhile
            self._queue.popleft()
            first = not self.turn_started_at
            if first:
                self.turn_started_at = time.monotonic()
            self.sent.append(chunk)
            self.sent_ms = chunk.turn_offset_ms + chunk.duration_ms
            self._send(agent_pb2.ConverseResponse(agent_audio=agent_pb2.AgentAudio(
                turn_id=chunk.turn_id, data=chunk.data, audio_offset_ms=int(chunk.turn_offset_ms),
                mark=turn_mark(chunk))))
            if first:
                if chunk.arrived_at:
                    telemetry.HOP.labels("tts->agent_audio").observe(
                        time.monotonic() - max(chunk.arrived_at, self.released_at))
                self._on_first_audio(chunk.turn_id)

    async def close(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
