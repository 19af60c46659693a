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
from google.protobuf import field_mask_pb2

from voxgrid.audio import AudioIn, AudioOut, AudioSpec, decode
from voxgrid.errors import ErrorDetails, from_status, parse_error
from voxgrid.v1 import agent_pb2, agent_pb2_grpc

TE = agent_pb2.TurnEvent
_END = object()
_AGENT_TURN_EVENTS = (TE.KIND_AGENT_STARTED_SPEAKING, TE.KIND_AGENT_STOPPED_SPEAKING, TE.KIND_INTERRUPTED)


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

    def agent_turns(self) -> list[int]:
        """Ids of the agent turns the caller heard or saw, in order. Ids increase but need not be consecutive:
        a speculative answer voided because the caller went on talking used one and left nothing else."""
        ids: list[int] = []
        for _, r in self.responses:
            which = r.WhichOneof("event")
            if which == "agent_text":
                tid = r.agent_text.turn_id
            elif which == "turn_event" and r.turn_event.kind in _AGENT_TURN_EVENTS:
                tid = r.turn_event.turn_id
            else:
                continue
            if tid and tid not in ids:
                ids.append(tid)
        return ids

    def agent_text(self, turn_id: int | None = None) -> str:
        """The agent's text from its deltas (a final AgentText carries no delta, only `full_text`)."""
        return "".join(t.text for t in self.of("agent_text") if turn_id is None or t.turn_id == turn_id)

    @property
    def started(self) -> agent_pb2.SessionStarted | None:
        """The session id and effective config the server sent first (None until it arrived)."""
        first = self.responses[0][1] if self.responses else None
        return first.session_started if first is not None and first.HasField("session_started") else None

    def notices(self) -> list[tuple[agent_pb2.SessionNotice, ErrorDetails]]:
        """Each in-stream problem with its parsed status (reason, field violations, retry delay)."""
        return [(n, notice_details(n)) for n in self.of("notice")]

    def usage(self, turn_id: int | None = None) -> list[agent_pb2.UsageReport]:
        """Usage reports: per agent turn (`turn_id`), and the session's totals (`final`, sent last)."""
        return [u for u in self.of("usage") if turn_id is None or u.turn_id == turn_id]

    @property
    def final_usage(self) -> agent_pb2.UsageTotals | None:
        """The session's usage totals (None until the stream's last report arrived)."""
        final = [u for u in self.of("usage") if u.final]
        return final[-1].usage if final else None

    def agent_audio(self, spec: AudioSpec, turn_id: int | None = None) -> np.ndarray:
        data = [a.data for a in self.of("agent_audio") if turn_id is None or a.turn_id == turn_id]
        if spec.packetized:  # Opus: one packet per message, decoded in order by one decoder
            opus = AudioIn(spec, spec.sample_rate_hz)
            chunks = [opus.feed(d) for d in data]
        else:
            chunks = [decode(d, spec) for d in data]
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
        self.audio_bytes_sent = 0
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

    @property
    def error_details(self) -> ErrorDetails | None:
        """Why the call failed, typed: reason, field violations, retry delay (None while it has not failed)."""
        return parse_error(self.error) if self.error is not None else None

    async def wait_started(self, timeout_s: float = 30.0) -> agent_pb2.SessionStarted:
        """The session's SessionStarted (its id and effective config); raises if the call failed first."""
        await self.wait_for(lambda rec: rec.started is not None, timeout_s)
        assert self.record.started is not None
        return self.record.started

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
        if request.WhichOneof("request") == "audio":
            self.audio_bytes_sent += len(request.audio)  # to check the server's usage record against
        self._queue.put_nowait(request)

    def send_audio(self, data: bytes) -> None:
        self.send(agent_pb2.ConverseRequest(audio=data))

    def interrupt(self) -> None:
        self.send(agent_pb2.ConverseRequest(control=agent_pb2.AgentControl(action=agent_pb2.AgentControl.ACTION_INTERRUPT)))

    def update(self, config: agent_pb2.SessionConfig, *paths: str) -> None:
        """Live update: the fields named by `paths` (e.g. "system_prompt", "sampling.temperature", "profile")
        are taken from `config`; the answer is an `updated` response, or a notice naming the field."""
        self.send(agent_pb2.ConverseRequest(update=agent_pb2.UpdateSession(
            config=config, update_mask=field_mask_pb2.FieldMask(paths=list(paths)))))

    def say(self, text: str, interruptible: bool | None = None) -> None:
        """Have the agent speak `text` now (or right after the turn in flight); it joins the history."""
        say = agent_pb2.SayText(text=text)
        if interruptible is not None:
            say.interruptible = interruptible
        self.send(agent_pb2.ConverseRequest(say=say))

    def add_message(self, role: str, text: str) -> None:
        """Add a "user", "assistant" or "system" message to the agent's context, without speaking."""
        self.send(agent_pb2.ConverseRequest(add_message=agent_pb2.UpdateContext(role=role, text=text)))

    def end(self) -> None:
        """AgentControl END: the agent stops now; the stream ends after the final usage report."""
        self.send(agent_pb2.ConverseRequest(control=agent_pb2.AgentControl(action=agent_pb2.AgentControl.ACTION_END)))

    def close(self) -> None:
        """Half-close: the agent finishes the turn in flight, then ends the stream."""
        self._queue.put_nowait(_END)

    async def stream(self, samples: np.ndarray, rate: int, *, realtime: bool = True, frame_ms: int = 20,
                     stop: asyncio.Event | None = None) -> float:
        """Send audio (float32 at `rate`) in the session's input format, paced like a microphone.

        Returns when the last frame went out (time.monotonic()).
        """
        wire = AudioOut(rate, self.spec)
        if self.spec.packetized:  # Opus: one 20 ms packet per message
            messages = wire.packets(samples, last=True)
            frame_ms = 20
        else:
            data = wire.feed(samples) + wire.flush()
            step = self.spec.bytes_for_ms(frame_ms)
            messages = [data[start : start + step] for start in range(0, len(data), step)]
        t0 = time.monotonic()
        for i, message in enumerate(messages):
            if stop is not None and stop.is_set():
                break
            if realtime:
                await asyncio.sleep(max(0.0, t0 + i * frame_ms / 1000 - time.monotonic()))
            self.send_audio(message)
        return time.monotonic()

    async def silence(self, seconds: float, frame_ms: int = 20, until: Callable[[], bool] | None = None) -> None:
        """Keep the line open with silence (a real caller's microphone never stops sending)."""
        quiet = np.zeros(int(16000 * frame_ms / 1000), np.float32)
        if self.spec.packetized:  # one Opus packet of silence, sent again and again
            frame_ms = 20
            frame = AudioOut(16000, self.spec).packets(quiet[:320], last=True)[0]
        else:
            frame = AudioOut(16000, self.spec).feed(quiet)
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
                raise RuntimeError(f"the call ended before the expected event ({describe(self.error_details)})")
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

    def nth_turn_over(self, n: int) -> Callable[[CallRecord], bool]:
        """Predicate: the caller's n-th agent turn (1-based, as `agent_turns` counts) finished or was interrupted."""
        def over(rec: CallRecord) -> bool:
            ids = rec.agent_turns()
            return len(ids) >= n and self.turn_over(ids[n - 1])(rec)
        return over


def notice_details(notice: agent_pb2.SessionNotice) -> ErrorDetails:
    """A notice's status, typed; notices from servers older than `status` give code and message only."""
    if notice.HasField("status"):
        return from_status(notice.status)
    return ErrorDetails(next((c for c in grpc.StatusCode if c.value[0] == notice.code), grpc.StatusCode.UNKNOWN),
                        notice.message)


def describe(err: ErrorDetails | None) -> str:
    """One line a person can act on: code, reason, fields, retry delay and the server's message."""
    if err is None:
        return "no error"
    parts = [err.code.name + (f" ({err.reason})" if err.reason else "")]
    if err.field_violations:
        parts.append("field " + ", ".join(err.fields))
    if err.retry_after_s is not None:
        parts.append(f"retry after {err.retry_after_s:g} s")
    return ", ".join(parts) + f": {err.message}"


async def list_profiles(stub: agent_pb2_grpc.AgentStub, timeout_s: float = 10.0) -> agent_pb2.ListProfilesResponse:
    """The agent profiles the orchestrator serves (name, description, mode, language, voice, adapter)."""
    return await stub.ListProfiles(agent_pb2.ListProfilesRequest(), timeout=timeout_s)


def session_config(rate: int = 16000, encoding: int = 1, **kw: object) -> agent_pb2.SessionConfig:
    from voxgrid.v1 import audio_pb2

    kw.setdefault("mode", agent_pb2.AGENT_MODE_PIPELINE)
    return agent_pb2.SessionConfig(
        input_format=audio_pb2.AudioFormat(encoding=encoding, sample_rate_hz=rate), **kw)  # type: ignore[arg-type]
