"""Phone calls: the media-stream WebSocket protocol cloud telephony providers use to fork call audio.

Twilio's <Connect><Stream> (and the providers that copied it) open a WebSocket and send JSON text
messages: `connected`, then `start` (stream and call ids, media format, customParameters), then `media`
every 20 ms with base64 8 kHz mu-law audio, `mark` when audio the gateway sent up to a named mark has
been played to the caller, and `stop` when the call ends. The gateway answers with `media` (the agent's
mu-law audio), a `mark` after each chunk (so the returning mark tells what the caller heard: a
PlaybackMark for the orchestrator) and `clear` when the caller barges in (the provider drops the audio
it still buffers). mu-law 8 kHz goes to the orchestrator as is: the audio edge resamples once there.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any, ClassVar

from aiohttp import WSMsgType
from voxgrid.gateway import calls
from voxgrid.gateway.bridge import CallBridge, CloseCall
from voxgrid.gateway.link import AgentLink

from voxgrid.audio import MULAW, AudioSpec
from voxgrid.v1 import agent_pb2

log = logging.getLogger("voxgrid.gateway.phone")
TE = agent_pb2.TurnEvent
MEDIA_ENCODING = "audio/x-mulaw"
MEDIA_RATE = 8000


def mark_name(turn_id: int, end_ms: int) -> str:
    return f"vx:{turn_id}:{end_ms}"


def parse_mark(name: str) -> tuple[int, int] | None:
    """(turn_id, played_ms) of one of the gateway's own marks; None for anyone else's."""
    parts = name.split(":")
    if len(parts) != 3 or parts[0] != "vx" or not (parts[1].isdigit() and parts[2].isdigit()):
        return None
    return int(parts[1]), int(parts[2])


class PhoneCall(CallBridge):
    kind = "phone"
    in_spec: ClassVar[AudioSpec] = AudioSpec(MULAW, MEDIA_RATE)
    out_spec: ClassVar[AudioSpec] = AudioSpec(MULAW, MEDIA_RATE)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.stream_sid = ""
        self.call_sid = ""

    async def event(self) -> dict[str, Any]:
        """The next JSON event; anything else closes the call with a reason."""
        msg = await self.receive()
        if msg.type != WSMsgType.TEXT:
            raise CloseCall(calls.CLOSE_UNSUPPORTED, "media streams send JSON text messages, not binary frames",
                            "binary_frame")
        try:
            event = json.loads(msg.data)
        except json.JSONDecodeError as exc:
            raise CloseCall(calls.CLOSE_BAD_PAYLOAD, f"message is not JSON ({exc.msg} at {exc.pos})",
                            "bad_json") from None
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            raise CloseCall(calls.CLOSE_BAD_PAYLOAD, 'each message must be a JSON object with an "event" field',
                            "bad_json")
        return event

    async def before_agent(self) -> None:
        while True:
            event = await self.event()
            kind = event["event"]
            if kind == "connected":
                continue
            if kind == "start":
                self._start(event)
                return
            if kind == "stop":
                raise CloseCall(calls.CLOSE_NORMAL, "stopped before start", "stopped_early")
            if kind == "media":
                raise CloseCall(calls.CLOSE_POLICY, "media before start: send the start event (with mediaFormat) "
                                "first", "media_before_start")
            # dtmf, marks and unknown events before the call starts carry nothing for the agent

    def _start(self, event: dict[str, Any]) -> None:
        start = event.get("start")
        if not isinstance(start, dict):
            raise CloseCall(calls.CLOSE_BAD_PAYLOAD, 'start event needs a "start" object', "bad_start")
        self.stream_sid = str(event.get("streamSid") or start.get("streamSid") or "")
        self.call_sid = str(start.get("callSid") or "")
        fmt = start.get("mediaFormat") or {}
        encoding, rate = fmt.get("encoding", MEDIA_ENCODING), int(fmt.get("sampleRate", MEDIA_RATE) or 0)
        channels = int(fmt.get("channels", 1) or 1)
        if encoding != MEDIA_ENCODING or rate != MEDIA_RATE or channels != 1:
            raise CloseCall(calls.CLOSE_UNSUPPORTED, f"mediaFormat {encoding} {rate} Hz x{channels} is not supported: "
                            f"stream {MEDIA_ENCODING} at {MEDIA_RATE} Hz mono", "bad_media_format")
        params = start.get("customParameters") or {}
        if isinstance(params, dict) and params.get("profile") and not self.profile:
            self.profile = str(params["profile"])
        if self.call_sid or self.stream_sid:
            self.session_id = (self.call_sid or self.stream_sid)[:64]

    async def inbound(self, link: AgentLink) -> None:
        while True:
            event = await self.event()
            kind = event["event"]
            if kind == "media":
                media = event.get("media")
                if not isinstance(media, dict):
                    raise CloseCall(calls.CLOSE_BAD_PAYLOAD, 'media event needs a "media" object', "bad_media")
                if media.get("track", "inbound") not in ("inbound", "inbound_track"):
                    continue  # a both-tracks stream also carries the agent's own audio back: not the caller
                try:
                    audio = base64.b64decode(media.get("payload", ""), validate=True)
                except (binascii.Error, ValueError, TypeError):
                    raise CloseCall(calls.CLOSE_BAD_PAYLOAD, "media.payload is not base64: send base64 of 8 kHz "
                                    "mu-law bytes", "bad_payload") from None
                if audio:
                    self.clock.received(len(audio))
                    link.send_audio(audio)
            elif kind == "mark":
                mark = parse_mark(str((event.get("mark") or {}).get("name", "")))
                if mark is not None and mark[0] not in self.interrupted_turns:
                    link.played(*mark)
            elif kind == "stop":
                return
            elif kind == "start":
                raise CloseCall(calls.CLOSE_POLICY, "a second start event on one stream", "second_start")
            # connected / dtmf / unknown: nothing for the agent

    async def on_response(self, response: agent_pb2.ConverseResponse, edge_v2v_s: float | None) -> None:
        kind = response.WhichOneof("event")
        if kind == "agent_audio":
            audio = response.agent_audio
            end_ms = audio.audio_offset_ms + round(self.out_spec.duration_ms(len(audio.data)))
            await self.ws.send_str(json.dumps({"event": "media", "streamSid": self.stream_sid,
                                               "media": {"payload": base64.b64encode(audio.data).decode()}}))
            await self.ws.send_str(json.dumps({"event": "mark", "streamSid": self.stream_sid,
                                               "mark": {"name": mark_name(audio.turn_id, end_ms)}}))
        elif kind == "turn_event" and response.turn_event.kind == TE.KIND_INTERRUPTED:
            await self.ws.send_str(json.dumps({"event": "clear", "streamSid": self.stream_sid}))
            log.info("barge-in on turn %d: cleared the caller's buffer (heard %r)", response.turn_event.turn_id,
                     response.turn_event.heard_text)
