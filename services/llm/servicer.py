"""The gRPC edge of the LLM service: reads the stream, hands requests to a `ChatSession`, answers.

Only parsing, validation and relaying happen here; every model step runs in the engine.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
from voxgrid.services.llm import protocol
from voxgrid.services.llm.engines.base import LlmEngine, RequestError
from voxgrid.services.llm.session import ChatSession
from voxgrid.services.llm.settings import LlmSettings

from voxgrid.errors import Reason
from voxgrid.server.streams import Outbox, abort, bind_session, pump, read_config
from voxgrid.v1 import audio_pb2, llm_pb2, llm_pb2_grpc

_STATUS = {code.value[0]: code for code in grpc.StatusCode}


class LanguageModelServicer(llm_pb2_grpc.LanguageModelServicer):
    def __init__(self, engine: LlmEngine, settings: LlmSettings) -> None:
        self.engine = engine
        self.settings = settings

    async def Chat(
        self, request_iterator: AsyncIterator[llm_pb2.ChatRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[llm_pb2.ChatResponse]:
        config = await read_config(request_iterator, context)
        served = self.settings.model_name
        if config.model and config.model != served:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        f"model {config.model!r} is not served here: this replica serves {served!r} "
                        "(leave `model` empty for the default)", field="config.model", reason=Reason.INVALID_CONFIG)
        try:
            self.engine.check_adapter(config.adapter)
        except RequestError as exc:
            await abort(context, _STATUS[exc.code], exc.message, field="config.adapter", reason=Reason.INVALID_CONFIG)
        session_id = config.session_id or f"llm-{uuid.uuid4().hex[:12]}"
        bind_session(session_id)
        outbox: Outbox[llm_pb2.ChatResponse] = Outbox()
        session = ChatSession(self.engine, outbox, session_id, config.adapter,
                              self.settings.max_requests_per_stream)
        # Fires when the RPC ends for any reason, including a client that vanished mid-generation.
        context.add_done_callback(lambda _context: session.close())
        try:
            async for response in pump(request_iterator, session.on_request, outbox, context,
                                       on_requests_end=session.finish_requests):
                yield response
        finally:
            session.close()

    async def ListModels(
        self, request: audio_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> llm_pb2.LanguageModelList:
        return llm_pb2.LanguageModelList(models=[protocol.model_info(self.engine.describe())])
