"""The echo service: the chassis with nothing behind it, for transport benchmarks and deployment checks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from voxgrid.config import ServerSettings
from voxgrid.server.chassis import ServiceRuntime
from voxgrid.server.streams import Outbox, bind_session, invalid, pump, read_config
from voxgrid.v1 import echo_pb2, echo_pb2_grpc


class EchoServicer(echo_pb2_grpc.EchoServicer):
    async def Stream(
        self, request_iterator: AsyncIterator[echo_pb2.EchoRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[echo_pb2.EchoResponse]:
        config = await read_config(request_iterator, context)
        bind_session(config.session_id)
        outbox: Outbox[echo_pb2.EchoResponse] = Outbox()
        count = 0

        async def on_request(request: echo_pb2.EchoRequest) -> None:
            nonlocal count
            if request.WhichOneof("request") != "frame":
                raise invalid("only `frame` messages may follow the config")
            count += 1
            outbox.put(echo_pb2.EchoResponse(frame=request.frame, sequence=count))

        async for response in pump(request_iterator, on_request, outbox, context):
            yield response


class EchoRuntime(ServiceRuntime):
    name = "echo"

    def service_names(self) -> list[str]:
        return [echo_pb2.DESCRIPTOR.services_by_name["Echo"].full_name]

    def register(self, server: grpc.aio.Server) -> None:
        echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(), server)


class Settings(ServerSettings):
    model_config = ServerSettings.model_config | {"env_prefix": "VOXGRID_ECHO_"}


def create_runtime(settings: Settings) -> EchoRuntime:
    return EchoRuntime()
