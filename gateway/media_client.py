"""A caller that speaks the telephony media-stream protocol, the way a provider's media fork does.

Tests and the benchmark use it to phone the gateway without a phone network: it sends `connected` and
`start`, streams 8 kHz mu-law in 20 ms `media` events at real-time pace, "plays" the agent's audio on a
real-time clock and returns each `mark` when playback reaches it (what a provider does), and records
every event it gets with its arrival time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any

import aiohttp
import numpy as np

from voxgrid.audio import MULAW, AudioOut, AudioSpec, decode

SPEC = AudioSpec(MULAW, 8000)
FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law


class MediaStreamCaller:
    def __init__(self, url: str, custom_parameters: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.custom_parameters = custom_parameters or {}
        self.headers = headers or {}
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.call_sid = "CA" + uuid.uuid4().hex
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.marks_returned: list[str] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self._session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._play_until = 0.0
        self._mark_timers: list[asyncio.TimerHandle] = []
        self._changed = asyncio.Event()
        self._seq = 0
        self._sending: set[asyncio.Future[None]] = set()

    async def __aenter__(self) -> MediaStreamCaller:
        self._session = aiohttp.ClientSession()
        self.ws = await self._session.ws_connect(self.url, headers=self.headers)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for timer in self._mark_timers:
            timer.cancel()
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
        if self._session is not None:
            await self._session.close()

    async def send(self, event: dict[str, Any]) -> None:
        self._seq += 1
        assert self.ws is not None
        await self.ws.send_str(json.dumps({"sequenceNumber": str(self._seq), "streamSid": self.stream_sid, **event}))

    async def start(self) -> None:
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send({"event": "start", "start": {
            "streamSid": self.stream_sid, "callSid": self.call_sid, "accountSid": "AC0", "tracks": ["inbound"],
            "customParameters": self.custom_parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})

    async def stream(self, mulaw: bytes, until: Any = None) -> float:
        """Send mu-law audio in 20 ms media events at real-time pace; returns when the last one went out."""
        t0 = time.monotonic()
        for i, at in enumerate(range(0, len(mulaw), FRAME_BYTES)):
            if (until is not None and until()) or self.closed:
                break
            await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))
            payload = base64.b64encode(mulaw[at: at + FRAME_BYTES]).decode()
            try:
                await self.send({"event": "media", "media": {"track": "inbound", "chunk": str(i + 1),
                                                             "timestamp": str(i * 20), "payload": payload}})
            except aiohttp.ClientConnectionResetError:
                break  # the gateway closed the call; close_code/close_reason say why
        return time.monotonic()

    async def silence(self, seconds: float, until: Any = None) -> None:
        await self.stream(bytes([0xFF]) * int(8000 * seconds), until=until)  # 0xFF is mu-law zero

    async def stop(self) -> None:
        await self.send({"event": "stop", "stop": {"accountSid": "AC0", "callSid": self.call_sid}})

    async def _read(self) -> None:
        assert self.ws is not None
        loop = asyncio.get_running_loop()
        while True:
            msg = await self.ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            event = json.loads(msg.data)
            now = time.monotonic()
            self.events.append((now, event))
            kind = event.get("event")
            if kind == "media":
                duration = len(base64.b64decode(event["media"]["payload"])) / 8000
                self._play_until = max(self._play_until, now) + duration
            elif kind == "mark":
                name = event["mark"]["name"]
                self._mark_timers.append(loop.call_at(self._play_until, self._return_mark, name))
            elif kind == "clear":
                for timer in self._mark_timers:
                    timer.cancel()
                self._mark_timers.clear()
                self._play_until = now
            self._changed.set()
        self.close_code = self.ws.close_code
        self.close_reason = str(msg.extra or "") if msg.type == aiohttp.WSMsgType.CLOSE else str(msg.data or "")
        self._changed.set()

    def _return_mark(self, name: str) -> None:
        if self.ws is not None and not self.ws.closed:
            self.marks_returned.append(name)
            task = asyncio.ensure_future(self.send({"event": "mark", "mark": {"name": name}}))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e.get("event") == kind]

    def agent_audio(self) -> np.ndarray:
        data = b"".join(base64.b64decode(e["media"]["payload"]) for e in self.of("media"))
        return decode(data, SPEC) if data else np.zeros(0, np.float32)

    @property
    def closed(self) -> bool:
        return self._reader is not None and self._reader.done()

    async def wait_for(self, predicate: Any, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            if self.closed:
                raise RuntimeError(f"socket closed ({self.close_code} {self.close_reason}) before the expected event")
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the gateway did not send what was expected in time")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass


def to_mulaw(samples: np.ndarray, rate: int) -> bytes:
    """float32 audio at `rate` as 8 kHz mu-law (what a phone line carries)."""
    out = AudioOut(rate, SPEC)
    return out.feed(samples) + out.flush()
