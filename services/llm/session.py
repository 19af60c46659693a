"""One Chat stream's state: its live generations and prewarms, and what happens when it ends.

Requests run concurrently; each live generation has a relay task that copies its engine events into
the stream's outbox, tagged with the request id. When the stream ends for any reason, `close()`
cancels everything still running in the engine, so a client that vanishes costs nothing afterwards.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from voxgrid.services.llm import protocol
from voxgrid.services.llm.engines.base import (
    INVALID_ARGUMENT,
    NOT_FOUND,
    RESOURCE_EXHAUSTED,
    GenerationHandle,
    GenerationRequest,
    LlmEngine,
    RequestError,
)

from voxgrid.server.streams import Outbox, invalid
from voxgrid.v1 import llm_pb2

log = logging.getLogger(__name__)


class ChatSession:
    def __init__(
        self, engine: LlmEngine, outbox: Outbox[llm_pb2.ChatResponse], session_id: str, adapter: str,
        max_requests: int,
    ) -> None:
        self.engine = engine
        self.outbox = outbox
        self.session_id = session_id
        self.adapter = adapter
        self.max_requests = max_requests
        self.live: dict[str, GenerationHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def on_request(self, request: llm_pb2.ChatRequest) -> None:
        kind = request.WhichOneof("request")
        if kind == "generate":
            self._generate(request.generate)
        elif kind == "prewarm":
            self._spawn(self._prewarm(request.prewarm), name="prewarm")
        elif kind == "cancel":
            self._cancel(request.cancel.request_id)
        elif kind == "config":
            raise invalid("`config` may only be the first message: open a new stream to change it")
        else:
            raise invalid("empty ChatRequest: set one of generate, prewarm or cancel")

    def _reject(self, request_id: str, code: int, message: str, with_done: bool = True) -> None:
        self.outbox.put(protocol.error_response(request_id, code, message))
        if with_done:
            self.outbox.put(protocol.failed_done(request_id))

    def _generate(self, generate: llm_pb2.GenerateRequest) -> None:
        request_id = generate.request_id
        if not request_id:
            self._reject("", INVALID_ARGUMENT, "generate.request_id is empty: choose an id unique on this stream")
            return
        if request_id in self.live:
            # No `done` here: it would read as the end of the live request with this id.
            self._reject(request_id, INVALID_ARGUMENT,
                         f"request_id {request_id!r} is already running on this stream: use a new id",
                         with_done=False)
            return
        if len(self.live) >= self.max_requests:
            self._reject(request_id, RESOURCE_EXHAUSTED,
                         f"this stream already runs {len(self.live)} generations (limit {self.max_requests}): "
                         "wait for one to finish or cancel one")
            return
        try:
            request = GenerationRequest(
                request_id=request_id,
                session_id=self.session_id,
                messages=protocol.messages_from_proto(generate.messages, self.engine.describe()),
                sampling=protocol.sampling_from_proto(generate.sampling),
                tools=protocol.tools_from_proto(generate.tools),
                stop=tuple(generate.stop),
                adapter=self.adapter,
            )
        except RequestError as exc:
            self._reject(request_id, exc.code, exc.message)
            return
        handle = self.engine.submit(request)
        self.live[request_id] = handle
        self._spawn(self._relay(handle), name=f"relay-{request_id}")

    async def _relay(self, handle: GenerationHandle) -> None:
        try:
            async for event in handle:
                self.outbox.put(protocol.response_for(handle.request_id, event))
        finally:
            self.live.pop(handle.request_id, None)

    async def _prewarm(self, prewarm: llm_pb2.PrewarmRequest) -> None:
        try:
            result = await self.engine.prewarm(
                self.session_id, protocol.messages_from_proto(prewarm.messages, self.engine.describe()),
                protocol.tools_from_proto(prewarm.tools), adapter=self.adapter,
            )
        except RequestError as exc:
            self.outbox.put(protocol.error_response("", exc.code, exc.message))
            return
        self.outbox.put(protocol.prewarm_response(result))

    def _cancel(self, request_id: str) -> None:
        handle = self.live.get(request_id)
        if handle is None:
            self._reject(request_id, NOT_FOUND,
                         f"no running generation with request_id {request_id!r} on this stream "
                         "(it may have finished already)", with_done=False)
            return
        handle.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def finish_requests(self) -> None:
        """The request side ended: let running requests finish, then end the stream.

        (grpc.aio also ends the request iterator when the client vanishes; the servicer's done
        callback then calls `close()`, which makes these requests finish at once.)
        """
        while self._tasks:
            await asyncio.wait(list(self._tasks))
        self.outbox.close()

    def close(self) -> None:
        """The stream is over: abort every generation still running and drop the session's caches.

        Synchronous on purpose: it runs while the stream's handler is being torn down (client gone),
        where awaiting is unreliable. Cancels are flags the engine sees before its next step; relay
        tasks end by themselves when the engine confirms.
        """
        for handle in list(self.live.values()):
            handle.cancel()
        for task in list(self._tasks):
            if not task.get_name().startswith("relay"):
                task.cancel()
        self.engine.end_session(self.session_id)
