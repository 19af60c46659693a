"""WebRTC calls: a browser (or any WebRTC peer) reaches the agent with one HTTP offer/answer (WHIP-style).

`POST /webrtc?profile=NAME` with the SDP offer as `application/sdp` answers `201 Created` with the SDP
answer and `Location: /webrtc/<session id>`; `DELETE` on that location hangs up. Audio is Opus both ways
(the browser's echo cancellation and noise suppression run before it is sent). A data channel the offer
opens carries the same JSON events as the WebSocket page (`ready`, `transcript`, `agent_text`, `event`,
`latency`, `notice`, and a last `closed` with the reason) and takes `interrupt`, `text` and `end`.

Audio format: aiortc decodes Opus into 48 kHz s16 frames and encodes whatever 48 kHz s16 frames the
outgoing track yields, so the call carries PCM16 48 kHz mono to the orchestrator and back: the gateway
only down-mixes, and the orchestrator's audio edge resamples once (48 kHz to the STT rate, the TTS rate to
48 kHz). Opus straight through would need the encoded packets, which aiortc's receiver never exposes (its
jitter buffer and decoder own the RTP), so it would mean decoding and re-encoding here.

Playback marks come from the outgoing track: it knows which turn and offset each 20 ms frame it hands
the encoder holds, so the orchestrator's barge-in heard-text follows what was actually sent (the browser's
jitter buffer adds some tens of ms on top).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from voxgrid.gateway import calls
from voxgrid.gateway.bridge import CallBridge, CloseCall, GatewayContext, SocketGone
from voxgrid.gateway.browser import event_doc
from voxgrid.gateway.ice_servers import IceServers
from voxgrid.gateway.link import AgentLink
from voxgrid.gateway.rtc_net import IcePolicy, OfferError, advertise, check_offer, gather_on, keep_reachable_candidates

from voxgrid.audio import AudioSpec, pcm16_spec
from voxgrid.v1 import agent_pb2

log = logging.getLogger("voxgrid.gateway.webrtc")
RATE = 48000
FRAME = RATE // 50  # 20 ms, what aiortc's Opus encoder cuts anyway
MARK_EVERY_MS = 100
TE = agent_pb2.TurnEvent


class AgentTrack:
    """The agent's voice as a paced audio track: queued turn audio, else silence, one 20 ms frame per tick.

    Built lazily as an aiortc `MediaStreamTrack` subclass (see `agent_track`) so importing this module does
    not import aiortc."""

    def __init__(self, on_sent: Callable[[int, int], None]) -> None:
        self._on_sent = on_sent
        self._chunks: deque[list[Any]] = deque()  # [turn, offset_ms, int16 samples, position]
        self._start: float | None = None
        self._ts = 0
        self._last_mark: tuple[int, int] | None = None

    @property
    def queued_samples(self) -> int:
        return sum(len(c[2]) - c[3] for c in self._chunks)

    def push(self, turn_id: int, offset_ms: int, pcm: bytes) -> float:
        """Queue agent audio; returns when its first sample should leave (the edge clock's send time)."""
        ahead = self.queued_samples
        self._chunks.append([turn_id, offset_ms, np.frombuffer(pcm, dtype=np.int16), 0])
        now = time.monotonic()
        if self._start is None:
            return now
        next_tick = max(now, self._start + (self._ts + FRAME) / RATE)
        return next_tick + ahead / RATE

    def flush(self) -> None:
        """Barge-in: drop what has not been sent."""
        self._chunks.clear()

    async def next_frame(self) -> np.ndarray:
        """Wait for the next 20 ms slot and return its samples (int16, FRAME long)."""
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._ts += FRAME
            wait = self._start + self._ts / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.5:  # the loop stalled: re-anchor rather than burst half a second of audio
                self._start = time.monotonic() - self._ts / RATE
        out = np.zeros(FRAME, dtype=np.int16)
        filled = 0
        mark: tuple[int, int] | None = None
        while filled < FRAME and self._chunks:
            chunk = self._chunks[0]
            turn, offset_ms, samples, pos = chunk
            n = min(FRAME - filled, len(samples) - pos)
            out[filled:filled + n] = samples[pos:pos + n]
            filled += n
            chunk[3] = pos + n
            mark = (turn, offset_ms + (pos + n) * 1000 // RATE)
            if chunk[3] >= len(samples):
                self._chunks.popleft()
        if mark is not None:
            last = self._last_mark
            turn_done = not any(c[0] == mark[0] for c in self._chunks)
            if last is None or last[0] != mark[0] or mark[1] - last[1] >= MARK_EVERY_MS or turn_done:
                self._last_mark = mark
                self._on_sent(*mark)
        return out


def agent_track(on_sent: Callable[[int, int], None]) -> Any:
    """An aiortc MediaStreamTrack whose frames come from an `AgentTrack`."""
    import av
    from aiortc import MediaStreamTrack

    class _Track(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.agent = AgentTrack(on_sent)

        async def recv(self) -> av.AudioFrame:
            samples = await self.agent.next_frame()
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = self.agent._ts
            frame.time_base = fractions.Fraction(1, RATE)
            return frame

    return _Track()


def to_mono_pcm16(frame: Any) -> bytes:
    """An aiortc audio frame (s16, packed, mono or stereo) as PCM16 mono bytes."""
    a = frame.to_ndarray().reshape(-1)
    channels = len(frame.layout.channels)
    if channels > 1:
        a = a.reshape(-1, channels).astype(np.int32).mean(axis=1).astype(np.int16)
    return a.astype("<i2").tobytes()


class RtcPeer:
    """The call's peer connection, as the bridge sees a socket: events out, control in, `close` frees it."""

    def __init__(self, pc: Any, on_sent: Callable[[int, int], None]) -> None:
        self.pc = pc
        self.track = agent_track(on_sent)
        self.incoming: Any = None
        self.channel: Any = None
        self.control: asyncio.Queue[Any] = asyncio.Queue(maxsize=256)
        self.connected = asyncio.Event()
        self.gone = asyncio.Event()
        self._pending: list[str] = []
        self._closed = False
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_channel)
        pc.on("connectionstatechange", self._on_state)

    def _on_track(self, track: Any) -> None:
        if track.kind == "audio" and self.incoming is None:
            self.incoming = track

    def _on_channel(self, channel: Any) -> None:
        self.channel = channel
        channel.on("open", self._flush)
        channel.on("message", self._on_message)
        if channel.readyState == "open":
            self._flush()

    def _on_message(self, data: str | bytes) -> None:
        try:
            self.control.put_nowait(data)
        except asyncio.QueueFull:  # a client flooding commands: the inbound loop closes the call
            self.gone.set()

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self.connected.set()
        elif state in ("failed", "closed"):
            self.gone.set()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for text in pending:
            self.channel.send(text)

    def send_json(self, doc: dict[str, Any]) -> None:
        text = json.dumps(doc)
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(text)
        elif len(self._pending) < 256:  # before the channel opens (or a peer that never opens one)
            self._pending.append(text)

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self, code: int = calls.CLOSE_NORMAL, message: bytes = b"") -> None:
        """Tell the page why (data channel), then close the peer connection: ICE, DTLS, tracks, ports."""
        if self._closed:
            return
        self._closed = True
        self.gone.set()
        if self.channel is not None and self.channel.readyState == "open":
            with contextlib.suppress(Exception):
                reason = message.decode(errors="replace")
                self.channel.send(json.dumps({"type": "closed", "code": code, "reason": reason}))
                for _ in range(20):  # let SCTP carry the reason before the transport goes
                    if not self.channel.bufferedAmount:
                        break
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.02)
        await self.pc.close()


class WebRTCCall(CallBridge):
    kind = "webrtc"
    in_spec: ClassVar[AudioSpec] = pcm16_spec(RATE)
    out_spec: ClassVar[AudioSpec] = pcm16_spec(RATE)

    def __init__(self, pc: Any, ctx: GatewayContext, profile: str, connect_timeout_s: float) -> None:
        self.peer = RtcPeer(pc, self._sent)
        super().__init__(self.peer, ctx, profile)  # type: ignore[arg-type]  # the peer stands in for a socket
        self.connect_timeout_s = connect_timeout_s
        self._audio_at = 0.0

    @classmethod
    async def negotiate(cls, offer_sdp: str, ctx: GatewayContext, profile: str, *, ice: IcePolicy,
                        ice_servers: IceServers, connect_timeout_s: float) -> tuple[WebRTCCall, str]:
        """Check the offer, build the peer (Opus only, our track on the offer's audio) and return the answer,
        its candidates gathered on `ice` (addresses, port range) and advertised on its public address.

        Raises rtc_net.OfferError (an HTTP 4xx) for an offer the gateway cannot take."""
        from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription

        check_offer(offer_sdp)
        pc = RTCPeerConnection(ice_servers.configuration())
        call = cls(pc, ctx, profile, connect_timeout_s)
        try:
            with gather_on(ice.addresses, ice.ports):
                await pc.setRemoteDescription(RTCSessionDescription(
                    keep_reachable_candidates(offer_sdp, ice.addresses), "offer"))
                opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]
                for transceiver in pc.getTransceivers():
                    if transceiver.kind == "audio":
                        transceiver.setCodecPreferences(opus)
                pc.addTrack(call.peer.track)
                await pc.setLocalDescription(await pc.createAnswer())
        except BaseException:
            await pc.close()
            raise
        answer = pc.localDescription.sdp
        if "a=candidate:" not in answer:  # every bind failed (the port range is full): say so now, not after ICE
            await pc.close()
            raise OfferError(503, "the gateway could not open a UDP port for this call (webrtc_udp_port_min/max "
                             "all taken or no usable ICE address): try again later")
        return call, advertise(answer, ice.public_ip)

    def hang_up(self) -> None:
        """DELETE from the client: end the call as if it had sent `end`."""
        self.peer.gone.set()

    def _sent(self, turn_id: int, played_ms: int) -> None:
        if self.link is not None and turn_id not in self.interrupted_turns:
            self.link.played(turn_id, played_ms)

    async def before_agent(self) -> None:
        """Wait for ICE and DTLS: a peer that never connects is dropped, its ports freed."""
        connected = asyncio.ensure_future(self.peer.connected.wait())
        gone = asyncio.ensure_future(self.peer.gone.wait())
        try:
            await asyncio.wait({connected, gone}, timeout=self.connect_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
            gone.cancel()
        if self.peer.connected.is_set() and not self.peer.gone.is_set():
            if self.peer.incoming is None:
                raise CloseCall(calls.CLOSE_BAD_PAYLOAD, "connected but no microphone track arrived", "no_audio")
            return
        if self.peer.gone.is_set():
            raise CloseCall(calls.CLOSE_GOING_AWAY, "the peer connection failed or was closed before it connected",
                            "ice_failed")
        raise CloseCall(calls.CLOSE_IDLE, f"ICE did not connect within {self.connect_timeout_s:g}s: check that the "
                        "client can reach the gateway's ICE addresses (UDP)", "ice_timeout")

    async def on_open(self) -> None:
        self.peer.send_json({"type": "ready", "session_id": self.session_id, "sample_rate": RATE,
                             "profile": self.ctx.profiles.profile_for(self.profile), "transport": "webrtc"})

    async def inbound(self, link: AgentLink) -> None:
        tasks = [asyncio.create_task(self._audio_in(link)), asyncio.create_task(self._control_in(link)),
                 asyncio.create_task(self.peer.gone.wait())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in tasks[:2]:
            if t in done:
                t.result()
        raise SocketGone()

    async def _audio_in(self, link: AgentLink) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await asyncio.wait_for(self.peer.incoming.recv(), self.ctx.idle_timeout_s)
            except TimeoutError:
                raise CloseCall(calls.CLOSE_IDLE, f"no audio for {self.ctx.idle_timeout_s:g}s from the peer",
                                "idle") from None
            except MediaStreamError:
                raise SocketGone() from None
            if frame.sample_rate != RATE:
                raise CloseCall(calls.CLOSE_UNSUPPORTED, f"audio arrived at {frame.sample_rate} Hz: only Opus "
                                "(48 kHz) is taken", "bad_codec")
            data = to_mono_pcm16(frame)
            self.clock.received(len(data))
            link.send_audio(data)

    async def _control_in(self, link: AgentLink) -> None:
        while True:
            data = await self.peer.control.get()
            try:
                doc = json.loads(data)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise CloseCall(calls.CLOSE_BAD_PAYLOAD, "data channel message is not JSON", "bad_json") from None
            kind = doc.get("type") if isinstance(doc, dict) else None
            if kind == "interrupt":
                self.peer.track.agent.flush()
                link.interrupt()
            elif kind == "text" and isinstance(doc.get("text"), str) and doc["text"].strip():
                link.send_text(doc["text"].strip())
            elif kind == "end":
                return
            elif kind != "playback":  # the gateway computes playback itself; a page's marks are ignored
                raise CloseCall(calls.CLOSE_BAD_PAYLOAD, f"unknown message {str(kind)[:40]!r}: send interrupt, "
                                "text or end", "bad_json")

    def audio_sent_at(self) -> float:
        return self._audio_at

    async def on_response(self, response: agent_pb2.ConverseResponse, edge_v2v_s: float | None) -> None:
        kind = response.WhichOneof("event")
        if kind == "agent_audio":
            a = response.agent_audio
            self._audio_at = self.peer.track.agent.push(a.turn_id, a.audio_offset_ms, a.data)
            return
        if kind == "turn_event" and response.turn_event.kind == TE.KIND_INTERRUPTED:
            self.peer.track.agent.flush()
        doc = event_doc(response, edge_v2v_s)
        if doc is not None:
            self.peer.send_json(doc)
