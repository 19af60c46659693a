"""Duplex service: Moshi full-duplex speech-to-speech, many conversations batched into slots on one model.

`voxgrid serve duplex --model kyutai/moshiko-pytorch-bf16 --slots 16` on a GPU; `--model random-small`
on CPU for tests (random weights: the audio it speaks is noise).
"""

from __future__ import annotations

import grpc
from voxgrid.services.duplex.engines import create_model
from voxgrid.services.duplex.servicer import DuplexServicer
from voxgrid.services.duplex.settings import DuplexSettings
from voxgrid.services.duplex.slot_scheduler import SlotScheduler

from voxgrid.server.chassis import ServiceRuntime
from voxgrid.v1 import duplex_pb2, duplex_pb2_grpc

Settings = DuplexSettings


class DuplexRuntime(ServiceRuntime):
    name = "duplex"

    def __init__(self, settings: DuplexSettings) -> None:
        self.settings = settings
        self.scheduler = SlotScheduler(
            create_model(settings), stall_timeout_s=settings.stall_timeout_s, max_buffered_s=settings.max_buffered_s
        )

    def service_names(self) -> list[str]:
        return [duplex_pb2.DESCRIPTOR.services_by_name["Duplex"].full_name]

    def register(self, server: grpc.aio.Server) -> None:
        duplex_pb2_grpc.add_DuplexServicer_to_server(DuplexServicer(self.scheduler, self.settings.model), server)

    async def start(self) -> None:
        await self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()


def create_runtime(settings: DuplexSettings) -> DuplexRuntime:
    return DuplexRuntime(settings)
