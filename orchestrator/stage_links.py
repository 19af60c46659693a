"""The session's three stage streams (STT, LLM, TTS): open, read, send, lose and re-open them.

Each stream stays open for the whole session; a reader task turns what arrives into session events
(`stt`, `llm`, `tts`; `<stage>_end` when the server closes it; `<stage>_lost` when it breaks). A lost
stage is re-opened on another replica (`reconnected`), and the collaborator that owns the turn's work
on that stage picks up where the lost one stopped. Nothing here decides about turns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from voxgrid.orchestrator import telemetry
from voxgrid.orchestrator.routing import BackendError, BackendPool, StageStream

from voxgrid.server.streams import StreamError
from voxgrid.v1 import llm_pb2, stt_pb2, tts_pb2

if TYPE_CHECKING:
    from voxgrid.orchestrator.session import PipelineSession

STAGES = ("stt", "llm", "tts")
METHODS = {"stt": "StreamingRecognize", "llm": "Chat", "tts": "StreamingSynthesize"}


class StageLinks:
    """The open stage streams of one session and their readers."""

    def __init__(self, session: PipelineSession, reconnect_attempts: int, tts_first_chunk_chars: int) -> None:
        self.s = session
        self.reconnect_attempts = reconnect_attempts
        self.tts_first_chunk_chars = tts_first_chunk_chars
        self.streams: dict[str, StageStream] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._reconnects: dict[str, int] = dict.fromkeys(STAGES, 0)
        self._configs: dict[str, Any] = {}

    def handlers(self) -> dict[str, Callable[[Any], None]]:
        return {"stt_lost": self._on_stt_lost, "llm_lost": self._on_llm_lost, "tts_lost": self._on_tts_lost,
                "llm_end": self._on_llm_end, "tts_end": self._on_tts_end, "stt_end": self._on_stt_end,
                "reconnected": self._on_reconnected}

    def send(self, stage: str, request: Any) -> None:
        self.streams[stage].send(request)
        self._meter(stage, request)

    def _meter(self, stage: str, request: Any) -> None:
        """Usage at the one place work leaves for a stage: audio to STT, text to TTS (orchestrator/usage.py)."""
        if stage == "stt" and request.WhichOneof("request") == "audio":
            self.s.usage.stt_audio(self.s.caller_edge.backend_spec.message_ms(request.audio))
        elif stage == "tts" and request.WhichOneof("request") == "text":
            self.s.usage.tts_text(request.text)

    def reading(self, stage: str) -> bool:
        """The stage's stream is still delivering (STT: more caller words may come)."""
        return stage in self._readers

    def pool(self, stage: str) -> BackendPool:
        return getattr(self.s.backends, stage)

    async def open(self) -> None:
        """Open the three stage streams at once; any that cannot be had fails the session with its stage."""
        s = self.s
        c = s.config
        stt_cfg = stt_pb2.RecognitionConfig(format=s.caller_edge.backend_spec.to_proto(),
                                            language=s.language.stt_language,
                                            session_id=s.session_id, interim_results=True,
                                            endpointing=c.endpointing)
        tts_cfg = tts_pb2.SynthesisConfig(voice=c.voice, output_format=s.agent_edge.backend_spec.to_proto(),
                                          session_id=s.session_id, language=c.language, speed=c.speed,
                                          first_chunk_max_chars=self.tts_first_chunk_chars)
        llm_cfg = llm_pb2.ChatConfig(session_id=s.session_id, adapter=c.adapter)
        opening = [
            asyncio.ensure_future(self.pool("stt").open("StreamingRecognize",
                                                        stt_pb2.RecognizeRequest(config=stt_cfg))),
            asyncio.ensure_future(self.pool("llm").open("Chat", llm_pb2.ChatRequest(config=llm_cfg))),
            asyncio.ensure_future(self.pool("tts").open("StreamingSynthesize",
                                                        tts_pb2.SynthesizeRequest(config=tts_cfg))),
        ]
        try:
            opened = await asyncio.gather(*opening, return_exceptions=True)
        except asyncio.CancelledError:  # the client left while the stages were opening: close what opened
            for task in opening:
                if task.done() and not task.cancelled() and task.exception() is None:
                    task.result().close()
            raise
        failures = [r for r in opened if isinstance(r, BaseException)]
        if s.closed:  # the caller's RPC ended while the stages were opening
            for result in opened:
                if isinstance(result, StageStream):
                    result.close()
            raise asyncio.CancelledError
        for stage, result in zip(STAGES, opened, strict=True):
            if isinstance(result, StageStream):
                self._attach(stage, result)
        if failures:
            await s.close()
            raise failures[0]
        self.tts_config = tts_cfg
        self._configs = {"stt": lambda: stt_pb2.RecognizeRequest(config=stt_cfg),
                         "llm": lambda: llm_pb2.ChatRequest(config=llm_cfg),
                         "tts": lambda: tts_pb2.SynthesizeRequest(config=tts_cfg)}

    def _attach(self, stage: str, stream: StageStream) -> None:
        self.streams[stage] = stream

        async def read() -> None:
            try:
                async for response in stream.responses():
                    self.s.post(stage, response)
                self.s.post(f"{stage}_end", stream)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as err:
                self.s.post(f"{stage}_lost", (stream, err))

        self._readers[stage] = asyncio.create_task(read())

    def replace(self, stage: str, stream: StageStream, config_request: Any) -> None:
        """Swap in a stream opened with a new config (a live update of the voice): the old one is closed
        and its reader stopped, and a later reconnect re-opens with the new config."""
        old, reader = self.streams.get(stage), self._readers.pop(stage, None)
        if reader is not None:
            reader.cancel()
        self._configs[stage] = lambda: config_request
        self._attach(stage, stream)
        if old is not None:
            old.close()

    def close(self) -> None:
        for task in self._readers.values():
            task.cancel()
        for stream in self.streams.values():
            stream.close()

    # --- a stage ends or breaks -------------------------------------------------------------------

    def _on_stt_lost(self, payload: tuple[StageStream, grpc.aio.AioRpcError]) -> None:
        self._lost("stt", *payload)

    def _on_llm_lost(self, payload: tuple[StageStream, grpc.aio.AioRpcError]) -> None:
        self._lost("llm", *payload)

    def _on_tts_lost(self, payload: tuple[StageStream, grpc.aio.AioRpcError]) -> None:
        self._lost("tts", *payload)

    def _on_stt_end(self, stream: StageStream) -> None:
        """STT closed its stream (after the caller's end): no more caller words will come."""
        if stream is self.streams.get("stt"):
            self._readers.pop("stt", None)
            self.s.maybe_finish()

    def _on_llm_end(self, stream: StageStream) -> None:
        if stream is self.streams.get("llm") and not self.s.ended:
            self._lost("llm", stream, None)

    def _on_tts_end(self, stream: StageStream) -> None:
        if stream is self.streams.get("tts") and not self.s.ended:
            self._lost("tts", stream, None)

    def _lost(self, stage: str, stream: StageStream, err: grpc.aio.AioRpcError | None) -> None:
        if stream is not self.streams.get(stage) or self.s.ended:
            return
        code = err.code() if err is not None else grpc.StatusCode.UNAVAILABLE
        if err is not None and code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                            grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            raise StreamError(code, f"the {stage} stage refused this session: {err.details()}")
        self._readers.pop(stage, None)
        stream.close()
        self.pool(stage).cool_down(stream.target, 5.0)
        if self._reconnects[stage] >= self.reconnect_attempts:
            raise StreamError(grpc.StatusCode.UNAVAILABLE,
                              f"the {stage} stage was lost ({code.name}) {self._reconnects[stage]} times; ending")
        self._reconnects[stage] += 1
        if stage == "stt":
            self.s.turn_taking.stt_restarted()
        config = self._configs[stage]()
        pool = self.pool(stage)

        async def reopen() -> None:
            try:
                result: StageStream | BaseException = await pool.open(METHODS[stage], config,
                                                                      exclude={stream.target})
            except Exception as exc:
                result = exc
            self.s.post("reconnected", (stage, result))

        self.s.spawn(reopen())

    def _on_reconnected(self, payload: tuple[str, StageStream | BaseException]) -> None:
        stage, result = payload
        if isinstance(result, BaseException):
            code = result.code if isinstance(result, BackendError) else grpc.StatusCode.UNAVAILABLE
            raise StreamError(code, f"the {stage} stage was lost and no other replica could take over: {result}")
        self._attach(stage, result)
        self.s.notice(grpc.StatusCode.UNAVAILABLE, f"{stage} replica lost; continued on {result.target}", stage)
        telemetry.BACKEND_RECONNECTS.labels(stage).inc()
        turn = self.s.turn
        if turn is None:
            return
        if stage == "llm":
            self.s.answer.llm_relinked(turn)
        elif stage == "tts":
            self.s.speech.tts_relinked(turn)
