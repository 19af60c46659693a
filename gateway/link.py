"""One orchestrator session on behalf of one socket, opened through the same routing every client uses.

`BackendPool` (orchestrator/routing.py) picks the least-loaded orchestrator replica that admits the
session and fails over on RESOURCE_EXHAUSTED or a dead replica, so gateways spread calls like the
orchestrator spreads its stages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from voxgrid.orchestrator.discovery import parse_discovery
from voxgrid.orchestrator.routing import BackendPool, StageStream

from voxgrid.v1 import agent_pb2, agent_pb2_grpc

Req = agent_pb2.ConverseRequest


def orchestrator_pool(backends: str, token: str = "", connect_timeout_s: float = 5.0,
                      dns_refresh_s: float = 5.0) -> BackendPool:
    return BackendPool("orchestrator", parse_discovery(backends, dns_refresh_s), agent_pb2_grpc.AgentStub,
                       token=token, connect_timeout_s=connect_timeout_s)


class AgentLink:
    """An admitted Converse stream: send the caller's side, iterate the agent's, close to free it all."""

    def __init__(self, stream: StageStream) -> None:
        self._stream = stream

    @classmethod
    async def open(cls, pool: BackendPool, config: agent_pb2.SessionConfig) -> AgentLink:
        """Raises voxgrid.orchestrator.routing.BackendError when no replica admits the session."""
        return cls(await pool.open("Converse", Req(config=config)))

    @property
    def target(self) -> str:
        return self._stream.target

    def send_audio(self, data: bytes) -> None:
        self._stream.send(Req(audio=data))

    def send_text(self, text: str) -> None:
        self._stream.send(Req(text=text))

    def interrupt(self) -> None:
        self._stream.send(Req(control=agent_pb2.AgentControl(action=agent_pb2.AgentControl.ACTION_INTERRUPT)))

    def played(self, turn_id: int, played_ms: int) -> None:
        self._stream.send(Req(playback=agent_pb2.PlaybackMark(turn_id=turn_id, played_ms=played_ms)))

    def responses(self) -> AsyncIterator[agent_pb2.ConverseResponse]:
        return self._stream.responses()

    def close(self) -> None:
        """Cancel the stream: the orchestrator ends the session and its backend streams at once."""
        self._stream.close()
