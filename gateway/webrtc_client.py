"""A WebRTC caller for the gateway's `/webrtc` endpoint (aiortc): tests, benchmarks, a quick check by hand.

It does what the page does: a microphone track (here fed from samples, paced like a real one), a data
channel for the JSON events, the offer POSTed as application/sdp, the answer applied, DELETE to hang up.
What the agent sends back is kept with arrival times, so a test can transcribe it and a benchmark can time it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import numpy as np
import soxr
from voxgrid.gateway.rtc_net import gather_on, keep_reachable_candidates
from voxgrid.gateway.webrtc import RATE, agent_track, to_mono_pcm16

from voxgrid.audio import encode, pcm16_spec


class OfferRefused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{status}: {text}")
        self.status = status
        self.text = text


class WebRTCCaller:
    """One call: `async with WebRTCCaller(url) as c: await c.say(x, rate); await c.wait(lambda c: ...)`."""

    def __init__(self, base_url: str, *, profile: str = "", token: str = "",
                 ice_addresses: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.base_url = base_url.rstrip("/")
        self.profile = profile
        self.token = token
        self.ice_addresses = ice_addresses
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.frames: list[tuple[float, np.ndarray]] = []  # (arrival, int16 mono 48 kHz) of non-silent frames
        self._received: list[tuple[bool, np.ndarray]] = []  # every frame: (non-silent, samples)
        self.location = ""
        self.answer = ""  # the gateway's SDP answer as received (its candidates: addresses, ports)
        self.mic_done_at = 0.0
        self._pc: Any = None
        self._channel: Any = None
        self._said = asyncio.Event()
        self._mic: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def offer(self) -> str:
        """Build the peer and return its offer SDP (gathered on `ice_addresses`), without sending it."""
        from aiortc import RTCConfiguration, RTCPeerConnection

        self._pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._mic = agent_track(self._mic_sent)
        pc.addTrack(self._mic)
        self._channel = channel = pc.createDataChannel("events")
        channel.on("message", lambda m: self.events.append((time.monotonic(), json.loads(m))))
        pc.on("track", lambda track: self._tasks.append(asyncio.create_task(self._listen(track))))
        with gather_on(self.ice_addresses):
            await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp

    async def post(self, sdp: str) -> tuple[int, str]:
        """POST an offer; (status, body)."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        url = f"{self.base_url}/webrtc" + (f"?profile={self.profile}" if self.profile else "")
        async with self._http.post(url, data=sdp, headers={"Content-Type": "application/sdp",
                                                           **self._headers()}) as r:
            self.location = r.headers.get("Location", "")
            return r.status, await r.text()

    async def connect(self) -> None:
        from aiortc import RTCSessionDescription

        status, body = await self.post(await self.offer())
        if status != 201:
            raise OfferRefused(status, body)
        self.answer = body
        with gather_on(self.ice_addresses):
            await self._pc.setRemoteDescription(RTCSessionDescription(
                keep_reachable_candidates(body, self.ice_addresses), "answer"))

    async def __aenter__(self) -> WebRTCCaller:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _listen(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            pcm = np.frombuffer(to_mono_pcm16(frame), dtype=np.int16)
            loud = bool(np.abs(pcm).max(initial=0) > 64)
            self._received.append((loud, pcm))
            if loud:  # arrival times of the agent's speech, not of the silence the track sends between turns
                self.frames.append((time.monotonic(), pcm))

    async def say(self, samples: np.ndarray, rate: int) -> None:
        """Queue speech on the microphone; returns when its last frame has been sent."""
        x = soxr.resample(samples.astype(np.float32), rate, RATE) if rate != RATE else samples
        agent = self._mic.agent
        self._said.clear()
        agent.push(0, 0, encode(np.asarray(x, dtype=np.float32), pcm16_spec(RATE)))
        await self._said.wait()
        self.mic_done_at = time.monotonic()

    def _mic_sent(self, turn_id: int, sent_ms: int) -> None:
        if not self._mic.agent.queued_samples:
            self._said.set()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e.get("type") == kind]

    async def wait(self, until: Callable[[WebRTCCaller], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not until(self):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def send(self, doc: dict[str, Any]) -> None:
        self._channel.send(json.dumps(doc))

    def agent_audio(self) -> np.ndarray:
        """What was received from the first non-silent frame to the last (float32 mono 48 kHz), pauses kept:
        dropping quiet frames inside speech would cut the closure of every plosive."""
        loud = [i for i, (is_loud, _) in enumerate(self._received) if is_loud]
        if not loud:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([f for _, f in self._received[loud[0]:loud[-1] + 1]]).astype(np.float32) / 32768.0

    async def close(self) -> None:
        if self._http is not None:
            if self.location:
                async with self._http.delete(self.base_url + self.location, headers=self._headers()):
                    pass
            await self._http.close()
            self._http = None
        if self._pc is not None:
            await self._pc.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
