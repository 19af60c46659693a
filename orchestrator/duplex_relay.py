"""Duplex mode: the caller's audio goes to a full-duplex speech-to-speech replica and its speech comes back.

There are no turns to take: the model listens while it speaks. The orchestrator only relays, so the
caller gets the same Agent API (audio out, text of what the agent says) whichever mode the session uses.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
from voxgrid.orchestrator import telemetry
from voxgrid.orchestrator.routing import BackendPool, StageStream

from voxgrid.audio import AudioSpec
from voxgrid.server.streams import Outbox, StreamError
from voxgrid.v1 import agent_pb2, duplex_pb2


class DuplexRelay:
    def __init__(self, config: agent_pb2.SessionConfig, session_id: str, pool: BackendPool,
                 out: Outbox[agent_pb2.ConverseResponse]) -> None:
        self.config = config
        self.session_id = session_id
        self.pool = pool
        self.out = out
        self.in_spec = AudioSpec.from_proto(config.input_format, what="input_format")
        self.stream: StageStream | None = None
        self._reader: asyncio.Task[None] | None = None
        self.closed = False

    async def open(self) -> None:
        output = self.config.output_format if self.config.HasField("output_format") else self.config.input_format
        stream = await self.pool.open("Converse", duplex_pb2.DuplexRequest(config=duplex_pb2.DuplexConfig(
            input_format=self.config.input_format, output_format=output, session_id=self.session_id)))
        if self.closed:  # the caller's RPC ended while the stream was opening
            stream.close()
            raise asyncio.CancelledError
        self.stream = stream

    def post(self, kind: str, payload: Any = None) -> None:
        assert self.stream is not None
        if kind == "client_end":
            self.stream.send(duplex_pb2.DuplexRequest(control=duplex_pb2.DuplexControl(
                action=duplex_pb2.DuplexControl.ACTION_END)))
            return
        request: agent_pb2.ConverseRequest = payload
        which = request.WhichOneof("request")
        if which == "audio":
            if len(request.audio) % self.in_spec.bytes_per_sample:
                self.out.close(StreamError(grpc.StatusCode.INVALID_ARGUMENT,
                                           f"audio of {len(request.audio)} bytes is not a whole number of "
                                           f"{self.in_spec} samples"))
                return
            self.stream.send(duplex_pb2.DuplexRequest(audio=request.audio))
        elif which == "control" and request.control.action == agent_pb2.AgentControl.ACTION_END:
            self.post("client_end")
        elif which in ("text", "playback") or (which == "control"):
            pass  # a duplex model takes audio only; marks and interrupts have no meaning there
        else:
            self.out.close(StreamError(grpc.StatusCode.INVALID_ARGUMENT, "config may only be sent once"))

    async def run(self) -> None:
        assert self.stream is not None
        telemetry.SESSIONS_BY_MODE.labels("duplex").inc()
        error: BaseException | None = None
        try:
            async for resp in self.stream.responses():
                audio = resp.audio
                if audio.text:
                    self.out.put(agent_pb2.ConverseResponse(agent_text=agent_pb2.AgentText(text=audio.text)))
                self.out.put(agent_pb2.ConverseResponse(agent_audio=agent_pb2.AgentAudio(
                    data=audio.data, audio_offset_ms=audio.audio_offset_ms)))
        except grpc.aio.AioRpcError as err:
            error = StreamError(err.code() if err.code() != grpc.StatusCode.CANCELLED else grpc.StatusCode.UNAVAILABLE,
                                f"the duplex replica ended the conversation: {err.details()}")
        finally:
            telemetry.SESSIONS_BY_MODE.labels("duplex").dec()
            self.out.close(error)

    async def close(self) -> None:
        self.closed = True
        if self.stream is not None:
            with contextlib.suppress(Exception):
                self.stream.close()
