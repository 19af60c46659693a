"""A caller of the Agent API: streams audio in real time and collects what the agent does.

Used by `voxgrid talk`, the demo, the load tester and the tests, so they all measure the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from voxgrid.audio import AudioOut, AudioSpec, decode
from voxgrid.v1 import agent_pb2, agent_pb2_grpc

TE = agent_pb2.TurnEvent
_END = object()


@dataclass
class CallRecord:
    """Everything a call produced, in arrival order, with client-side arrival times."""

    responses: list[tuple[float, agent_pb2.ConverseResponse]] = field(default_factory=list)

    def of(self, kind: str) -> list:
        return [getattr(r, kind) for _, r in self.responses if r.WhichOneof("event") == kind]

    def events(self, kind: int | None = None) -> list[agent_pb2.TurnEvent]:
        return [e for e in self.of("turn_event") if kind is None or e.kind == kind]

    def finals(self) -> list[str]:
        return [t.text for t in self.of("user_transcript") if t.is_final]

    def agent_text(self, turn_id: int | None = None) -> str:
        return "".join(t.text for t in self.of("agent_text") if turn_id is None or t.turn_id == turn_id)

    def agent_audio(self, spec: AudioSpec, turn_id: int | None = None) -> np.ndarray:
        chunks = [decode(a.data, spec) for a in self.of("agent_audio") if turn_id is None or a.turn_id == turn_id]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


class AgentCall:
    """One Converse stream. `async with AgentCall(stub, config) as call:` then send/await."""

    def __init__(self, stub: agent_pb2_grpc.AgentStub, config: agent_pb2.SessionConfig) -> None:
        self.config = config
        # A bad format is the server's to refuse (the tests check its message), so no client-side check here.
        self.spec = AudioSpec(config.input_format.encoding, config.input_format.sample_rate_hz)
        out = config.output_format if config.HasField("output_format") else config.input_format
        self.out_spec = AudioSpec(out.encoding, out.sample_rate_hz)
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._queue.put_nowait(agent_pb2.ConverseRequest(config=config))
        self._stub = stub
        self.record = CallRecord()
        self._changed = asyncio.Event()
        self.done = asyncio.Event()
        self.error: grpc.aio.AioRpcError | None = None
        self._reader: asyncio.Task[None] | None = None
        self.call: grpc.aio.StreamStreamCall | None = None

    async def _requests(self):  # type: ignore[no-untyped-def]
        while (item := await self._queue.get()) is not _END:
            yield item

    async def __aenter__(self) -> AgentCall:
        self.call = self._stub.Converse(self._requests())
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        if self.call is not None:
            self.call.cancel()
        if self._reader is not None:
            self._reader.cancel()

    async def _read(self) -> None:
        assert self.call is not None
        try:
            async for response in self.call:
                self.record.responses.append((time.monotonic(), response))
                self._changed.set()
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                self.error = err
        finally:
            self.done.set()
            self._changed.set()

    def send(self, request: agent_pb2.ConverseRequest) -> None:
        self._queue.put_nowait(request)

    def send_audio(self, data: bytes) -> None:
        self.send(agent_pb2.ConverseRequest(audio=data))

    def interrupt(self) -> None:
        self.send(agent_pb2.ConverseRequest(control=agent_pb2.AgentControl(action=agent_pb2.AgentControl.ACTION_INTERRUPT)))

    def close(self) -> None:
        """Half-close: the agent finishes the turn in flight, then ends the stream."""
        self._queue.put_nowait(_END)

    async def stream(self, samples: np.ndarray, rate: int, *, realtime: bool = True, frame_ms: int = 20,
                     stop: asyncio.Event | None = None) -> float:
        """Send audio (float32 at `rate`) in the session's input format, paced like a microphone.

        Returns when the last frame went out (time.monotonic()).
        """
        wire = AudioOut(rate, self.spec)
        data = wire.feed(samples) + wire.flush()
        step = self.spec.bytes_for_ms(frame_ms)
        t0 = time.monotonic()
        for i, start in enumerate(range(0, len(data), step)):
            if stop is not None and stop.is_set():
                break
            if realtime:
                await asyncio.sleep(max(0.0, t0 + i * frame_ms / 1000 - time.monotonic()))
            self.send_audio(data[start : start + step])
        return time.monotonic()

    async def silence(self, seconds: float, frame_ms: int = 20, until: Callable[[], bool] | None = None) -> None:
        """Keep the line open with silence (a real caller's microphone never stops sending)."""
        frame = AudioOut(16000, self.spec).feed(np.zeros(int(16000 * frame_ms / 1000), np.float32))
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < seconds:
            if until is not None and until():
                return
            await asyncio.sleep(max(0.0, t0 + i * frame_ms / 1000 - time.monotonic()))
            self.send_audio(frame)
            i += 1

    async def wait_for(self, predicate: Callable[[CallRecord], bool], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate(self.record):
            if self.done.is_set():
                raise RuntimeError(f"the call ended before the expected event ({self.error})")
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the agent did not do what was expected in time")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    def turn_over(self, turn_id: int) -> Callable[[CallRecord], bool]:
        """Predicate: that agent turn finished or was interrupted."""
        kinds = (TE.KIND_AGENT_STOPPED_SPEAKING, TE.KIND_INTERRUPTED)
        return lambda rec: any(e.turn_id == turn_id and e.kind in kinds for e in rec.events())


def session_config(rate: int = 16000, encoding: int = 1, **kw: object) -> agent_pb2.SessionConfig:
    from voxgrid.v1 import audio_pb2

    kw.setdefault("mode", agent_pb2.AGENT_MODE_PIPELINE)
    return agent_pb2.SessionConfig(
        input_format=audio_pb2.AudioFormat(encoding=encoding, sample_rate_hz=rate), **kw)  # type: ignore[arg-type]
