"""Browser calls: the gateway's own page talks to the agent over one WebSocket (`/ws`).

Client to gateway: binary messages are the microphone as PCM16 little-endian 16 kHz mono (any whole
number of samples, 20 ms is typical); text messages are JSON commands:
`{"type": "interrupt"}`, `{"type": "playback", "turn_id": N, "played_ms": M}` (what the page has played
of that agent turn), `{"type": "text", "text": "..."}` (a typed turn), `{"type": "end"}`.

Gateway to client: binary messages are agent audio, an 8-byte header (uint32 LE turn id, uint32 LE
offset of the chunk in the turn, ms) then PCM16 16 kHz mono; text messages are JSON events:
`ready`, `transcript` (partials and finals), `agent_text`, `event` (turn events: user/agent started or
stopped speaking, interrupted with heard_text, tool calls), `latency` (the orchestrator's per-turn
record plus `edge_voice_to_voice_ms`, measured at the gateway), `notice`.
"""

from __future__ import annotations

import json
import struct
from typing import Any, ClassVar

from aiohttp import WSMsgType
from google.protobuf import json_format
from voxgrid.gateway import calls
from voxgrid.gateway.bridge import CallBridge, CloseCall, SocketGone
from voxgrid.gateway.link import AgentLink

from voxgrid.audio import AudioSpec, pcm16_spec
from voxgrid.v1 import agent_pb2

RATE = 16000
AUDIO_HEADER = struct.Struct("<II")
TE = agent_pb2.TurnEvent
EVENT_NAMES = {v: k.removeprefix("KIND_").lower() for k, v in TE.Kind.items()}


def _as_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


class BrowserCall(CallBridge):
    kind = "browser"
    in_spec: ClassVar[AudioSpec] = pcm16_spec(RATE)
    out_spec: ClassVar[AudioSpec] = pcm16_spec(RATE)

    async def send_json(self, doc: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(doc))

    async def on_open(self) -> None:
        await self.send_json({"type": "ready", "session_id": self.session_id, "sample_rate": RATE,
                              "profile": self.ctx.profiles.profile_for(self.profile)})

    async def inbound(self, link: AgentLink) -> None:
        while True:
            msg = await self.receive()
            if msg.type == WSMsgType.BINARY:
                if len(msg.data) % 2:
                    raise CloseCall(calls.CLOSE_BAD_PAYLOAD, f"audio message of {len(msg.data)} bytes is not whole "
                                    "PCM16 samples: send 16 kHz PCM16 mono, 2 bytes per sample", "bad_payload")
                if msg.data:
                    self.clock.received(len(msg.data))
                    link.send_audio(msg.data)
                continue
            try:
                doc = json.loads(msg.data)
            except json.JSONDecodeError as exc:
                raise CloseCall(calls.CLOSE_BAD_PAYLOAD, f"text message is not JSON ({exc.msg})", "bad_json") from None
            kind = doc.get("type") if isinstance(doc, dict) else None
            if kind == "interrupt":
                link.interrupt()
            elif kind == "playback":
                turn, played = doc.get("turn_id"), doc.get("played_ms")
                if not (isinstance(turn, int) and isinstance(played, int) and turn >= 0 and played >= 0):
                    raise CloseCall(calls.CLOSE_BAD_PAYLOAD, "playback needs integer turn_id and played_ms >= 0",
                                    "bad_json")
                if turn not in self.interrupted_turns:
                    link.played(turn, played)
            elif kind == "text" and isinstance(doc.get("text"), str) and doc["text"].strip():
                link.send_text(doc["text"].strip())
            elif kind == "end":
                raise SocketGone()
            else:
                raise CloseCall(calls.CLOSE_BAD_PAYLOAD, f"unknown message {str(kind)[:40]!r}: send interrupt, "
                                "playback, text or end", "bad_json")

    async def on_response(self, response: agent_pb2.ConverseResponse, edge_v2v_s: float | None) -> None:
        if response.WhichOneof("event") == "agent_audio":
            a = response.agent_audio
            await self.ws.send_bytes(AUDIO_HEADER.pack(a.turn_id, a.audio_offset_ms) + a.data)
            return
        doc = event_doc(response, edge_v2v_s)
        if doc is not None:
            await self.send_json(doc)


def event_doc(response: agent_pb2.ConverseResponse, edge_v2v_s: float | None) -> dict[str, Any] | None:
    """One agent event (anything but audio) as the page's JSON; the WebRTC data channel sends the same."""
    kind = response.WhichOneof("event")
    if kind == "user_transcript":
        t = response.user_transcript
        return {"type": "transcript", "text": t.text, "final": t.is_final}
    if kind == "agent_text":
        return {"type": "agent_text", "turn_id": response.agent_text.turn_id, "text": response.agent_text.text}
    if kind == "turn_event":
        e = response.turn_event
        return {"type": "event", "kind": EVENT_NAMES.get(e.kind, str(e.kind)), "turn_id": e.turn_id,
                "heard_text": e.heard_text, "tool_name": e.tool_name, "state": e.state}
    if kind == "latency":
        doc = {"type": "latency", **_as_dict(response.latency)}
        doc["edge_voice_to_voice_ms"] = None if edge_v2v_s is None else round(edge_v2v_s * 1000, 1)
        return doc
    if kind == "notice":
        return {"type": "notice", **_as_dict(response.notice)}
    return None
