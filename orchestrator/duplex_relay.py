"""Duplex mode: the caller's audio goes to a full-duplex speech-to-speech replica and its speech comes back.

There are no turns to take: the model listens while it speaks. The orchestrator only relays, so the
caller gets the same Agent API (audio out, text of what the agent says) whichever mode the session uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import grpc
from voxgrid.orchestrator import telemetry
from voxgrid.orchestrator.notices import session_notice
from voxgrid.orchestrator.routing import BackendPool, StageStream
from voxgrid.orchestrator.usage import UsageMeter

from voxgrid.audio import AudioSpec
from voxgrid.audio_edge import AgentEdge, CallerEdge, suppressor_for
from voxgrid.errors import Reason
from voxgrid.server.streams import Outbox, StreamError
from voxgrid.v1 import agent_pb2, duplex_pb2


class DuplexRelay:
    def __init__(self, config: agent_pb2.SessionConfig, session_id: str, pool: BackendPool,
                 out: Outbox[agent_pb2.ConverseResponse]) -> None:
        self.config = config
        self.session_id = session_id
        self.pool = pool
        self.out = out
        self.in_spec = AudioSpec.from_proto(config.input_format, what="input_format", allow_opus=True)
        out_spec = (AudioSpec.from_proto(config.output_format, what="output_format", allow_opus=True)
                    if config.HasField("output_format") else self.in_spec)
        # The same audio edge as the pipeline: Opus and noise suppression before the model hears the caller.
        self.caller_edge = CallerEdge(self.in_spec, suppressor_for(config.edge_audio), deliver=self._to_model)
        self.agent_edge = AgentEdge(out_spec)
        self.stream: StageStream | None = None
        self._reader: asyncio.Task[None] | None = None
        self.closed = False
        self.usage = UsageMeter("duplex")

    async def open(self) -> None:
        stream = await self.pool.open("Converse", duplex_pb2.DuplexRequest(config=duplex_pb2.DuplexConfig(
            input_format=self.caller_edge.backend_spec.to_proto(),
            output_format=self.agent_edge.backend_spec.to_proto(), session_id=self.session_id)))
        if self.closed:  # the caller's RPC ended while the stream was opening
            stream.close()
            raise asyncio.CancelledError
        self.stream = stream

    def post(self, kind: str, payload: Any = None) -> None:
        assert self.stream is not None
        if kind == "client_end":
            if self.caller_edge.finish(lambda: self.post("client_end")):
                return  # the suppression worker's tail goes to the model first
            self.stream.send(duplex_pb2.DuplexRequest(control=duplex_pb2.DuplexControl(
                action=duplex_pb2.DuplexControl.ACTION_END)))
            return
        request: agent_pb2.ConverseRequest = payload
        which = request.WhichOneof("request")
        if which == "audio":
            if not self.in_spec.packetized and len(request.audio) % self.in_spec.bytes_per_sample:
                self.out.close(StreamError(grpc.StatusCode.INVALID_ARGUMENT,
                                           f"audio of {len(request.audio)} bytes is not a whole number of "
                                           f"{self.in_spec} samples"))
                return
            try:
                self.usage.caller_audio(self.caller_edge.message_ms(request.audio))
                data = self.caller_edge.feed(request.audio)
            except ValueError as exc:
                self.out.close(StreamError(grpc.StatusCode.INVALID_ARGUMENT, f"audio: {exc}"))
                return
            if data:
                self.stream.send(duplex_pb2.DuplexRequest(audio=data))
        elif which == "control" and request.control.action == agent_pb2.AgentControl.ACTION_END:
            self.post("client_end")
        elif which in ("update", "say", "add_message"):
            # Refused in-stream, the call goes on: the speech-to-speech model has no prompt or text input.
            self.out.put(agent_pb2.ConverseResponse(notice=session_notice(
                grpc.StatusCode.FAILED_PRECONDITION, f"{which} does not apply in DUPLEX mode: the speech-to-speech "
                "model takes the caller's audio only (no persona, tools or text to speak); use AGENT_MODE_PIPELINE "
                "for live control", "control", reason=Reason.INVALID_REQUEST, field=which)))
        elif which == "playback":
            self.usage.played(0, float(request.playback.played_ms))  # one stream: one "turn"
        elif which in ("text", "control"):
            pass  # a duplex model takes audio only; typed text and interrupts have no meaning there
        else:
            self.out.close(StreamError(grpc.StatusCode.INVALID_ARGUMENT, "config may only be sent once"))

    async def run(self) -> None:
        assert self.stream is not None
        telemetry.SESSIONS_BY_MODE.labels("duplex").inc()
        error: BaseException | None = None
        opened_at = time.monotonic()
        try:
            async for resp in self.stream.responses():
                audio = resp.audio
                if audio.text:
                    self.out.put(agent_pb2.ConverseResponse(agent_text=agent_pb2.AgentText(text=audio.text)))
                for data, offset_ms in self.agent_edge.packets(audio.data):  # one stream: one "utterance"
                    self.usage.agent_audio(0, self.agent_edge.message_ms(data))
                    self.out.put(agent_pb2.ConverseResponse(agent_audio=agent_pb2.AgentAudio(
                        data=data, audio_offset_ms=audio.audio_offset_ms if offset_ms < 0 else int(offset_ms))))
        except grpc.aio.AioRpcError as err:
            error = StreamError(err.code() if err.code() != grpc.StatusCode.CANCELLED else grpc.StatusCode.UNAVAILABLE,
                                f"the duplex replica ended the conversation: {err.details()}")
        finally:
            telemetry.SESSIONS_BY_MODE.labels("duplex").dec()
            self.usage.duplex(time.monotonic() - opened_at)
            self.out.put(self.usage.final_report())  # the session's usage, last before the stream ends
            self.out.close(error)

    def _to_model(self, data: bytes) -> None:
        """Caller audio back from the suppression worker (neural suppressors), in order."""
        if data and self.stream is not None and not self.closed:
            self.stream.send(duplex_pb2.DuplexRequest(audio=data))

    async def close(self) -> None:
        self.closed = True
        self.caller_edge.close()
        if self.stream is not None:
            with contextlib.suppress(Exception):
                self.stream.close()
