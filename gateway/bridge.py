"""What every call does, whatever the socket protocol: admit, open the agent, pump both ways, clean up.

A protocol (browser, phone) subclasses `CallBridge` with how it reads the socket (`inbound`) and how it
writes the agent's events to it (`on_response`). Either side ending ends the call; the orchestrator stream
is cancelled in every case, so a socket dropped mid-turn leaves nothing running behind it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import ClassVar

import grpc
from aiohttp import WSMsgType, web
from voxgrid.gateway import calls
from voxgrid.gateway.calls import CallGate, GatewayMetrics
from voxgrid.gateway.latency import EdgeClock
from voxgrid.gateway.link import AgentLink
from voxgrid.gateway.profiles import ProfileRoutes
from voxgrid.orchestrator.routing import BackendError, BackendPool

from voxgrid.audio import AudioSpec
from voxgrid.logs import bind_session
from voxgrid.v1 import agent_pb2

log = logging.getLogger("voxgrid.gateway")
TE = agent_pb2.TurnEvent


class CloseCall(Exception):
    """End the call and close the socket with this code and reason."""

    def __init__(self, code: int, reason: str, cause: str = "") -> None:
        super().__init__(reason)
        self.code = code
        # Close reasons must fit a control frame (125 bytes with the code).
        self.reason = reason if len(reason.encode()) <= 120 else reason.encode()[:117].decode(errors="ignore") + "..."
        self.cause = cause


class SocketGone(Exception):
    """The client closed or dropped the socket."""


@dataclass
class GatewayContext:
    """What calls share: routing to the orchestrators, profiles, the call gate and metrics."""

    pool: BackendPool
    profiles: ProfileRoutes
    gate: CallGate
    metrics: GatewayMetrics
    idle_timeout_s: float
    sockets: set[web.WebSocketResponse]


def _status_close(code: grpc.StatusCode, details: str) -> CloseCall:
    """The agent ended the stream with an error: say which, in words a client can act on."""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return CloseCall(calls.CLOSE_POLICY, f"agent refused the session: {details}", "invalid_config")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return CloseCall(calls.CLOSE_AGENT_UNAVAILABLE, f"agent unavailable: {details}", "agent_unavailable")
    return CloseCall(calls.CLOSE_INTERNAL, f"agent error {code.name}: {details}", "agent_error")


class CallBridge(abc.ABC):
    kind: ClassVar[str]
    # The agent audio format this protocol carries on its socket.
    in_spec: ClassVar[AudioSpec]
    out_spec: ClassVar[AudioSpec]

    def __init__(self, ws: web.WebSocketResponse, ctx: GatewayContext, profile: str) -> None:
        self.ws = ws
        self.ctx = ctx
        self.profile = profile
        self.session_id = uuid.uuid4().hex[:16]
        self.clock = EdgeClock(self.in_spec)
        self.link: AgentLink | None = None
        self.interrupted_turns: set[int] = set()

    # -- protocol hooks -------------------------------------------------------------------------
    @abc.abstractmethod
    async def inbound(self, link: AgentLink) -> None:
        """Read the socket until the caller is done, forwarding to the agent; raise CloseCall on bad input."""

    @abc.abstractmethod
    async def on_response(self, response: agent_pb2.ConverseResponse, edge_v2v_s: float | None) -> None:
        """Write one agent event to the socket."""

    async def before_agent(self) -> None:  # noqa: B027 - optional hook
        """Read what must come before the agent session opens (the phone's `start` event)."""

    # -- shared machinery -----------------------------------------------------------------------
    async def receive(self) -> web.WSMessage:
        """The next data message; idle sockets, closes and protocol errors end the call."""
        try:
            msg = await self.ws.receive(timeout=self.ctx.idle_timeout_s)
        except TimeoutError:
            raise CloseCall(calls.CLOSE_IDLE, f"no message for {self.ctx.idle_timeout_s:g}s: keep streaming audio "
                            "(silence too) while the call is up", "idle") from None
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            raise SocketGone()
        if msg.type == WSMsgType.ERROR:  # aiohttp already closed it (1009 for an oversized message)
            raise CloseCall(self.ws.close_code or calls.CLOSE_TOO_BIG, str(msg.data), "bad_frame")
        return msg

    def session_config(self) -> agent_pb2.SessionConfig:
        # The orchestrator holds the profiles: the call only names one (an unknown name is refused there).
        config = agent_pb2.SessionConfig(profile=self.ctx.profiles.profile_for(self.profile))
        config.input_format.CopyFrom(self.in_spec.to_proto())
        config.output_format.CopyFrom(self.out_spec.to_proto())
        config.session_id = self.session_id
        return config

    async def run(self) -> None:
        """The whole call; always leaves the socket closed and the agent session cancelled."""
        bind_session(self.session_id)
        gate, m = self.ctx.gate, self.ctx.metrics
        refusal = gate.refusal()
        if refusal is not None:
            m.refused.labels("draining" if gate.draining else "full").inc()
            log.info("%s call refused: %s", self.kind, refusal[1])
            await self.ws.close(code=refusal[0], message=refusal[1].encode())
            return
        started = gate.enter_call(self.kind)
        self.ctx.sockets.add(self.ws)
        code, reason = calls.CLOSE_NORMAL, "call ended"
        try:
            await self.before_agent()
            config = self.session_config()
            bind_session(self.session_id)
            try:
                self.link = await AgentLink.open(self.ctx.pool, config)
            except BackendError as exc:
                raise CloseCall(calls.CLOSE_AGENT_UNAVAILABLE, f"no agent available: {exc.message}",
                                "agent_unavailable") from None
            log.info("%s call started on %s (profile %r)", self.kind, self.link.target, config.profile or self.profile)
            await self.on_open()
            code, reason = await self._pump(self.link)
        except CloseCall as exc:
            code, reason = exc.code, exc.reason
            m.errors.labels(self.kind, exc.cause or "closed").inc()
            log.info("%s call closed: %d %s", self.kind, code, reason)
        except SocketGone:
            log.info("%s socket closed by the client", self.kind)
        except (ConnectionResetError, asyncio.CancelledError) as exc:
            log.info("%s socket dropped: %r", self.kind, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if self.link is not None:
                self.link.close()
            self.ctx.sockets.discard(self.ws)
            gate.leave_call(self.kind, started)
            if not self.ws.closed:
                with contextlib.suppress(Exception):
                    await self.ws.close(code=code, message=reason.encode())

    async def on_open(self) -> None:  # noqa: B027 - optional hook
        """The agent session is open (the browser is told it may start talking)."""

    def audio_sent_at(self) -> float:
        """When the agent audio just handed to `on_response` leaves the gateway (a paced track: later)."""
        return time.monotonic()

    async def _pump(self, link: AgentLink) -> tuple[int, str]:
        inbound = asyncio.create_task(self.inbound(link), name=f"{self.kind}-inbound")
        outbound = asyncio.create_task(self._outbound(link), name=f"{self.kind}-outbound")
        try:
            done, _ = await asyncio.wait({inbound, outbound}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (inbound, outbound):
                task.cancel()
            await asyncio.gather(inbound, outbound, return_exceptions=True)
        first = inbound if inbound in done else outbound
        first.result()  # re-raises CloseCall / SocketGone
        if first is inbound:
            return calls.CLOSE_NORMAL, "caller hung up"
        return calls.CLOSE_NORMAL, "agent ended the call"

    async def _outbound(self, link: AgentLink) -> None:
        try:
            async for response in link.responses():
                self.clock.observe(response)
                kind = response.WhichOneof("event")
                edge = None
                if kind == "latency":
                    edge = self.clock.voice_to_voice_s(response.latency)
                    if edge is not None:
                        self.ctx.metrics.voice_to_voice.labels(self.kind).observe(edge)
                elif kind == "turn_event" and response.turn_event.kind == TE.KIND_INTERRUPTED:
                    self.interrupted_turns.add(response.turn_event.turn_id)
                    self.ctx.metrics.interruptions.labels(self.kind).inc()
                elif kind == "agent_audio" and response.agent_audio.turn_id in self.interrupted_turns:
                    continue  # already flushed on the client: never play a cut-off turn's tail
                await self.on_response(response, edge)
                if kind == "agent_audio":
                    self.clock.audio_sent(response.agent_audio.turn_id, self.audio_sent_at())
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED:
                raise SocketGone() from None
            raise _status_close(err.code(), err.details() or "") from None
